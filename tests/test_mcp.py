"""--mcp: an MCP client lists the tools and gets generated, repainted and upscaled images through them."""
from __future__ import annotations

import asyncio
import base64
import io

import pytest
from PIL import Image

from tests.server_process import ServerProcess

mcp = pytest.importorskip("mcp")


def test_mcp_txt2img_tool(tmp_path, models_dir):
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    server = ServerProcess(tmp_path, models_dir, "--mcp").start()

    async def call():
        async with streamablehttp_client(server.url + "/gradio_api/mcp/") as (read, write, _), \
                ClientSession(read, write) as session:
                await session.initialize()
                tools = {tool.name: tool for tool in (await session.list_tools()).tools}
                result = await session.call_tool("txt2img", {"prompt": "an mcp robot", "steps": 2, "width": 64,
                                                             "height": 64, "seed": 31})
                buffer = io.BytesIO()
                Image.new("RGB", (64, 64), (10, 200, 10)).save(buffer, format="PNG")
                repainted = await session.call_tool("img2img", {
                    "image_base64": base64.b64encode(buffer.getvalue()).decode(), "prompt": "keep it",
                    "denoising_strength": 0.0, "width": 64, "height": 64, "seed": 32})
                upscaled = await session.call_tool("upscale", {
                    "image_base64": base64.b64encode(buffer.getvalue()).decode(), "scale": 2, "upscaler": "Nearest"})
                return tools, result, repainted, upscaled

    try:
        tools, result, repainted, upscaled = asyncio.run(asyncio.wait_for(call(), 120))
    finally:
        server.stop()
    # UI events are private; only the documented tools are offered
    assert sorted(tools) == ["img2img", "txt2img", "upscale"]
    assert "prompt" in tools["txt2img"].inputSchema["properties"]
    assert not result.isError, result
    saved = list((tmp_path / "outputs" / "txt2img-images").rglob("*-31.png"))
    assert len(saved) == 1
    assert Image.open(saved[0]).info["parameters"].startswith("an mcp robot\n")
    assert any(saved[0].name in getattr(item, "text", "") for item in result.content)
    assert not repainted.isError, repainted
    (kept,) = list((tmp_path / "outputs" / "img2img-images").rglob("*-32.png"))
    assert Image.open(kept).convert("RGB").getpixel((5, 5)) == (10, 200, 10)
    assert not upscaled.isError, upscaled
    (bigger,) = list((tmp_path / "outputs" / "extras-images").rglob("*.png"))
    with Image.open(bigger) as image:
        assert image.size == (128, 128) and image.convert("RGB").getpixel((100, 100)) == (10, 200, 10)


def test_mcp_tools_work_with_auth_on(tmp_path, models_dir):
    """With --gradio-auth, an MCP client sending HTTP Basic credentials calls the tools (before: Gradio's MCP
    server called its own API through a client without a login: "credentials were not provided"); without
    credentials the MCP route is refused."""
    import httpx
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    server = ServerProcess(tmp_path, models_dir, "--mcp", "--gradio-auth", "alice:secret").start()
    login = {"Authorization": "Basic " + base64.b64encode(b"alice:secret").decode()}

    async def call():
        async with streamablehttp_client(server.url + "/gradio_api/mcp/", headers=login) as (read, write, _), \
                ClientSession(read, write) as session:
            await session.initialize()
            return await session.call_tool("txt2img", {"prompt": "a locked robot", "steps": 2, "width": 64,
                                                       "height": 64, "seed": 41})

    try:
        result = asyncio.run(asyncio.wait_for(call(), 120))
        anonymous = httpx.post(server.url + "/gradio_api/mcp/", json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                               headers={"accept": "application/json, text/event-stream"}, timeout=60)
        wrong = httpx.post(server.url + "/gradio_api/mcp/", json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                           headers={"accept": "application/json, text/event-stream"}, auth=("alice", "guess"),
                           timeout=60)
    finally:
        server.stop()
    assert not result.isError, result
    (saved,) = list((tmp_path / "outputs" / "txt2img-images").rglob("*-41.png"))
    assert Image.open(saved).info["parameters"].startswith("a locked robot\n")
    assert anonymous.status_code == 401 and wrong.status_code == 401


def test_mcp_tools_offer_restore_faces_as_the_other_fields(services, with_gfpgan):
    """In process (no server): the tool schema lists restore_faces and the face model (an enum), and a call with
    restore_faces runs the job with A1111's Restore faces (its infotext key)."""
    import gradio as gr
    from gradio.mcp import GradioMCPServer

    from ui.mcp_tools import register_mcp_tools

    with gr.Blocks() as page:
        register_mcp_tools(services)
    server = GradioMCPServer(page)
    for tool in ("txt2img", "img2img"):
        description, parameters = server.get_fn_description(server.get_block_fn_from_endpoint_name(
            server.tool_to_endpoint[tool]), tool)
        properties = server.get_input_schema(tool, parameters)[0]["properties"]
        assert properties["restore_faces"]["type"] == "boolean"
        assert properties["face_restoration_model"]["enum"] == ["GFPGAN", "CodeFormer"]
        assert "models/GFPGAN" in properties["restore_faces"]["description"]
    txt2img = next(block.fn for block in page.fns.values() if block.api_name == "txt2img")
    (path,) = txt2img("a face", steps=1, width=64, height=64, seed=7, sampler_name="Euler", restore_faces=True)
    assert "Face restoration: GFPGAN" in Image.open(path).info["parameters"]
    (plain,) = txt2img("a face", steps=1, width=64, height=64, seed=7, sampler_name="Euler")
    assert "Face restoration" not in Image.open(plain).info["parameters"]
