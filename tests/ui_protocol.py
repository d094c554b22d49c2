"""Drive the web UI's event handlers over Gradio's own HTTP protocol, as the page (or a hostile client) does:
read /config, upload files, join the queue with a value for every input, read the event stream."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx


class UiSession:
    def __init__(self, client: httpx.Client):
        self.client = client
        config = client.get("/config").json()
        self.components = {c["id"]: c for c in config["components"]}
        self.dependencies = config["dependencies"]

    def elem_id(self, component_id: int) -> str | None:
        return self.components.get(component_id, {}).get("props", {}).get("elem_id")

    def event(self, trigger_elem_id: str, event: str = "click") -> dict:
        for dependency in self.dependencies:
            if any(self.elem_id(target) == trigger_elem_id and name == event
                   for target, name in dependency["targets"]):
                return dependency
        raise KeyError(f"no {event} event on #{trigger_elem_id}")

    def page_value(self, component_id: int):
        """What the page holds before the user changes anything (Gradio leaves an empty text out of /config)."""
        component = self.components[component_id]
        return component.get("props", {}).get("value", "" if component.get("type") == "textbox" else None)

    def upload(self, name: str, content: bytes) -> dict:
        """Upload like the browser does; returns the FileData a component value holds."""
        answer = self.client.post("/gradio_api/upload", files={"files": (name, content)})
        answer.raise_for_status()
        path = answer.json()[0]
        return {"path": path, "orig_name": name, "meta": {"_type": "gradio.FileData"}, "size": len(content)}

    def call(self, trigger_elem_id: str, values: dict[str, object], event: str = "click") -> tuple[bool, str]:
        """Run the event with each input at its page value except `values` (by elem_id); returns (success, every
        message of the event stream as text, outputs and errors included)."""
        dependency = self.event(trigger_elem_id, event)
        data = []
        for component_id in dependency["inputs"]:
            elem_id = self.elem_id(component_id)
            data.append(values[elem_id] if elem_id in values else self.page_value(component_id))
        unknown = set(values) - {self.elem_id(i) for i in dependency["inputs"]}
        assert not unknown, f"not inputs of #{trigger_elem_id}: {unknown}"
        session = uuid.uuid4().hex
        body = json.dumps({"data": data, "fn_index": dependency["id"], "trigger_id": dependency["targets"][0][0],
                           "session_hash": session, "event_data": None})  # NaN/Infinity as literals, as JS can't
        joined = self.client.post("/gradio_api/queue/join", content=body, headers={"content-type": "application/json"})
        if joined.status_code != 200:
            return False, joined.text
        messages = []
        with self.client.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                messages.append(message)
                if message.get("msg") == "process_completed":
                    return bool(message.get("success")), json.dumps(messages)
        return False, json.dumps(messages)


def file_data(path: Path) -> dict:
    return {"path": str(path), "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}
