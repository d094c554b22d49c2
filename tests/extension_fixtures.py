"""Throw-away extensions written into a temp folder: one that uses every hook, and broken ones of each kind."""
from __future__ import annotations

from pathlib import Path

PROBE = '''
"""Uses every part of the extension API and writes what it saw to calls.log beside itself."""
import json
from pathlib import Path

__version__ = "0.3"
LOG = Path(__file__).with_name("calls.log")


def record(kind, **facts):
    with LOG.open("a") as handle:
        handle.write(json.dumps({"kind": kind, **facts}) + "\\n")


def register(api):
    def section(tab):
        import gradio as gr
        return {"note": gr.Textbox(label="Probe note", elem_id=f"{tab}_probe_note"),
                "strength": gr.Slider(0, 1, value=0.25, label="Probe strength", elem_id=f"{tab}_probe_strength")}

    def tab():
        import gradio as gr
        gr.Markdown("Probe tab content", elem_id="probe_tab_content")

    def before(request):
        args = request.extension_args.get("probe", {})
        record("before", prompt=request.prompt, args=args, seed=request.seed)
        if args.get("note") == "change":
            return request.model_copy(update={"prompt": request.prompt + ", probed"})
        return None

    def step(info):
        record("step", step=info.step, steps=info.steps, shape=list(info.latents.shape))

    def after(request, result):
        record("after", images=len(result.images))

    def before_save(info):
        note = info.request.extension_args.get("probe", {}).get("note")
        return {"Probe note": note} if note else None

    def wrapper(request, run):
        if request.extension_args.get("probe", {}).get("note") != "twice":
            return run(request)
        first = run(request)
        second = run(request.model_copy(update={"seed": request.seed + 100}))
        return first.model_copy(update={"images": first.images + second.images})

    def double(image, size):
        return image.resize(size)

    api.add_section("Probe", section)
    api.add_tab("Probe tab", tab)
    api.on_before_generate(before)
    api.on_step(step)
    api.on_after_generate(after)
    api.on_before_save(before_save)
    api.wrap_generation(wrapper)
    api.register_upscaler("Probe resize", double)
    api.register_sampler("Probe Euler", "EulerDiscreteScheduler", {"timestep_spacing": "trailing"})
    api.add_api_route("ping", lambda: {"pong": True, "api_version": api.version})
'''

BROKEN_IMPORT = "raise ImportError('this extension needs a package that is not installed')\n"
BROKEN_REGISTER = '''
def register(api):
    api.on_before_generate(lambda request: request.model_copy(update={"prompt": "HIJACKED"}))
    raise RuntimeError("register failed half way")
'''
BROKEN_HOOK = '''
def register(api):
    def before_save(info):
        raise ValueError("this hook always fails")
    api.on_before_save(before_save)
'''
NEVER_IMPORTED = "raise SystemExit('a .disabled folder must not be imported')\n"


def write_extensions(folder: Path) -> Path:
    packages = {"probe": PROBE, "broken_import": BROKEN_IMPORT, "broken_register": BROKEN_REGISTER,
                "broken_hook": BROKEN_HOOK, "old.disabled": NEVER_IMPORTED}
    for name, source in packages.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "__init__.py").write_text(source)
    (folder / "not_a_package").mkdir(exist_ok=True)
    (folder / "not_a_package" / "README.md").write_text("no __init__.py here\n")
    (folder / "probe" / "javascript").mkdir(exist_ok=True)
    (folder / "probe" / "javascript" / "probe.js").write_text("window.probeExtensionLoaded = true;\n")
    (folder / "probe" / "style.css").write_text("#probe_tab_content { border: 3px solid rgb(1, 2, 3); }\n")
    return folder
