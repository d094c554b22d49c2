"""Composition root: flags -> Settings -> services -> Gradio UI -> launch.

Ctrl-C or SIGTERM stops the server cleanly: the running job stops at its next step (the image it was making is
not saved) and is recorded as interrupted, queued jobs never start, and the process exits with code 0. A second
Ctrl-C exits at once (code 130).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import secrets
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
GENERATED_USER = "webui"
STOP_TIMEOUT_SECONDS = 10  # how long a stop waits for the running job to reach its next step


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Stable Diffusion WebUI (A1111-compatible, diffusers inside)")
    net = parser.add_argument_group("network")
    net.add_argument("--listen", action="store_true", help="serve on 0.0.0.0 so other machines can connect")
    net.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    net.add_argument("--share", action="store_true", help="create a public Gradio share link")
    net.add_argument("--gradio-auth", metavar="USER:PASS[,USER2:PASS2]",
                     help="require a login for the web UI; several comma-separated pairs allowed")
    net.add_argument("--gradio-auth-path", metavar="FILE",
                     help="file with USER:PASS pairs, one per line or comma-separated")
    net.add_argument("--share-no-auth", action="store_true",
                     help="with --share: no password at all (anyone with the link can use this machine)")
    net.add_argument("--cors-allow-origins", metavar="ORIGIN[,ORIGIN2]", default="",
                     help="other web sites (e.g. https://example.com) whose pages may call this server; "
                          "default none")
    net.add_argument("--allowed-hosts", metavar="NAME[,NAME2]", default="",
                     help="host names this server is reached by besides localhost (and, with --listen, its IP "
                          "addresses and this machine's names): a DNS name or reverse proxy; *.example.com allows "
                          "every name below example.com. Other Host headers are refused (DNS rebinding)")
    net.add_argument("--forwarded-allow-ips", metavar="IP[,IP2]", default="",
                     help="reverse proxies whose X-Forwarded-For/-Proto headers are trusted (addresses or networks "
                          "such as 127.0.0.1 or 10.0.0.0/8); default none: the connecting address is the client")
    net.add_argument("--max-upload-mb", type=float, default=50.0,
                     help="largest upload or API request body in MB (base64 counted as decoded size; default 50)")
    net.add_argument("--api", action="store_true", help="serve A1111's REST API under /sdapi/v1 (docs at /docs)")
    net.add_argument("--api-auth", metavar="USER:PASS[,USER2:PASS2]", help="HTTP Basic credentials for the API")
    net.add_argument("--mcp", action="store_true",
                     help="also serve txt2img and img2img as MCP tools for AI assistants (Gradio's MCP server)")
    net.add_argument("--enable-insecure-extension-access", action="store_true",
                     help="allow installing/updating/removing extensions even with --listen or --share")
    net.add_argument("--enable-server-folders", action="store_true",
                     help="allow reading folders on the server (Upscale's Batch from directory, img2img Batch) "
                          "even with --listen or --share")
    paths = parser.add_argument_group("folders")
    paths.add_argument("--models-dir", type=Path, default=APP_DIR / "models",
                       help="root holding Stable-diffusion/, Lora/, VAE/, ESRGAN/ (A1111 layout)")
    paths.add_argument("--ckpt-dir", type=Path, default=None,
                       help="folder of checkpoints (default: <models-dir>/Stable-diffusion)")
    paths.add_argument("--lora-dir", type=Path, default=None, help="folder of LoRAs (default: <models-dir>/Lora)")
    paths.add_argument("--vae-dir", type=Path, default=None, help="folder of VAEs (default: <models-dir>/VAE)")
    paths.add_argument("--embeddings-dir", type=Path, default=None,
                       help="folder of textual-inversion embeddings (default: embeddings/ beside <models-dir>)")
    paths.add_argument("--extensions-dir", type=Path, default=APP_DIR / "extensions",
                       help="folder of extensions, one Python package each (default ./extensions)")
    paths.add_argument("--outputs-dir", type=Path, default=APP_DIR / "outputs", help="where images are saved")
    paths.add_argument("--cache-dir", type=Path, default=APP_DIR / "cache",
                       help="hash cache and the built-in demo model")
    model = parser.add_argument_group("model")
    model.add_argument("--ckpt", metavar="NAME", default=None,
                       help="checkpoint to load first: file name, title, short hash, or a hub repo id")
    model.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                       help="where to run the model (auto: CUDA, then MPS, then CPU)")
    model.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto",
                       help="weights precision (auto: fp16 on a GPU, fp32 on the CPU)")
    model.add_argument("--xformers", action="store_true",
                       help="use xformers attention when installed on a CUDA machine (default: PyTorch SDPA)")
    model.add_argument("--max-models", type=int, default=None,
                       help="checkpoints kept loaded in memory (default: the option sd_checkpoints_limit, 1)")
    model.add_argument("--max-cache-gb", type=float, default=16.0, help="memory limit of that cache in GB")
    speed = parser.add_argument_group("speed and memory")
    speed.add_argument("--compile", action="store_true",
                       help="torch.compile the UNet (on a GPU also channels_last): faster steps, the "
                            "first job after a model load waits for the compile (cached in <cache-dir>/torch-compile)")
    offload = speed.add_mutually_exclusive_group()
    offload.add_argument("--medvram", action="store_true",
                         help="GPUs with little memory: keep models in RAM, move each to the GPU while it works")
    offload.add_argument("--lowvram", action="store_true",
                         help="GPUs with very little memory: move layer by layer (slow)")
    speed.add_argument("--tiled-vae", choices=["auto", "always", "never"], default="auto",
                       help="decode images in tiles to save memory (auto: above 1536x1536 pixels; default auto)")
    upscale = parser.add_argument_group("upscaling")
    upscale.add_argument("--upscale-tile-size", type=int, default=192,
                         help="upscaler models work on tiles of this many pixels (0: whole image; default 192)")
    upscale.add_argument("--upscale-tile-overlap", type=int, default=16,
                         help="pixels neighbouring tiles share and blend (default 16, at most a quarter tile)")
    upscale.add_argument("--max-upscale-size", type=int, default=8192,
                         help="largest width or height an upscale may produce (default 8192)")
    scale = parser.add_argument_group("scaling out (Ray)")
    scale.add_argument("--workers", metavar="N|auto", type=worker_count, default=None,
                       help="run jobs on N worker processes of a local Ray runtime, each on its own GPU when there are "
                            "GPUs (auto: one per GPU, else 1); default: one worker inside the server process")
    scale.add_argument("--ray-address", metavar="ADDR", default=None,
                       help="join an existing Ray cluster (e.g. HEAD:6379, or 'auto' on a cluster node) and run one "
                            "worker per GPU it grants (--workers caps it); the cluster must be on a private network")
    scale.add_argument("--worker-threads", metavar="N", type=int, default=None,
                       help="torch CPU threads per worker (default: the CPU cores / the workers)")
    scale.add_argument("--ray-dashboard", action="store_true",
                       help="start Ray's dashboard with the local runtime (on 127.0.0.1 only; off by default)")
    return parser.parse_args(argv)


def worker_count(text: str) -> int:
    """--workers: a number of workers from 1, or 'auto' (0 here: one per visible GPU, else 1)."""
    if text == "auto":
        return 0
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of workers or 'auto'") from None
    if count < 1:
        raise argparse.ArgumentTypeError("give at least 1 worker, or 'auto'")
    return count


def worker_pool(args: argparse.Namespace, settings):
    """The Ray worker pool the flags ask for, or None for the one in-process worker (Ray is not imported then)."""
    if args.workers is None and args.ray_address is None:
        return None
    if args.worker_threads is not None and args.worker_threads < 1:
        raise SystemExit("--worker-threads: give at least 1 thread")
    from backend.cluster.ray_pool import PoolPlan, RayWorkerPool

    return RayWorkerPool(settings, PoolPlan(workers=args.workers or None, address=args.ray_address,
                                            torch_threads=args.worker_threads, dashboard=args.ray_dashboard))


def parse_credentials(text: str | None, flag: str) -> list[tuple[str, str]] | None:
    pairs = [item.strip() for item in (text or "").replace("\n", ",").split(",") if item.strip()]
    for pair in pairs:
        if ":" not in pair:
            raise SystemExit(f"{flag}: '{pair}' is not USER:PASS")
        user, _, password = pair.partition(":")
        if not user:
            raise SystemExit(f"{flag}: a USER:PASS pair has an empty user name")
        if not password:
            raise SystemExit(f"{flag}: user '{user}' has an empty password; give every user a password")
    return [tuple(pair.split(":", 1)) for pair in pairs] or None


def read_auth(args: argparse.Namespace) -> list[tuple[str, str]] | None:
    text = ",".join(filter(None, [args.gradio_auth,
                                  Path(args.gradio_auth_path).read_text() if args.gradio_auth_path else None]))
    return parse_credentials(text, "--gradio-auth")


@dataclass(frozen=True)
class Access:
    """Who may use the server: the web UI's and the REST API's credentials (empty: open)."""
    ui: tuple[tuple[str, str], ...]
    api: tuple[tuple[str, str], ...]
    generated_password: str | None = None  # made for --share without credentials; printed once


def access_from_args(args: argparse.Namespace) -> Access:
    """The UI's credentials also guard the API unless --api-auth gives its own; a share link never goes out
    without a password unless the operator asks for that with --share-no-auth."""
    ui = tuple(read_auth(args) or ())
    generated = None
    if args.share and not ui and not args.share_no_auth:
        generated = secrets.token_urlsafe(12)
        ui = ((GENERATED_USER, generated),)
    api = tuple(parse_credentials(args.api_auth, "--api-auth") or ()) or ui
    return Access(ui=ui, api=api, generated_password=generated)


def announce_access(args: argparse.Namespace, access: Access):
    if access.generated_password:
        print(f"\nThe share link is protected: user '{GENERATED_USER}', password '{access.generated_password}'\n"
              "(shown once; choose your own with --gradio-auth USER:PASS, or --share-no-auth to open the link to "
              "anyone who has it)\n", flush=True)
    if args.share and not access.ui:
        logging.warning("--share-no-auth: anyone with the link can generate on this machine and see its outputs")
    elif args.listen and not access.ui:
        logging.warning("--listen without --gradio-auth: anyone on the network can use this server")


def http_policy(args: argparse.Namespace, access: Access, outputs_dir: Path, upload_dir: Path,
                owns_upload_dir: bool = True):
    """What the guard in front of every route enforces; refuses (SystemExit) flags that would open it."""
    from backend.http.allowed_hosts import machine_names, parse_allowed_hosts
    from backend.http.security import HttpPolicy

    upload_bytes = int(args.max_upload_mb * 2**20)
    origins = tuple(o.strip().rstrip("/") for o in args.cors_allow_origins.split(",") if o.strip())
    if any(origin in ("*", "null") for origin in origins):
        raise SystemExit("--cors-allow-origins: name the sites (https://example.com); '*' or 'null' would let "
                         "every web page drive this server from its visitors' browsers")
    try:
        hosts = parse_allowed_hosts(args.allowed_hosts)
    except ValueError as error:
        raise SystemExit(f"--allowed-hosts: {error}") from None
    exposed, outputs = args.listen or args.share, outputs_dir.resolve()
    return HttpPolicy(ui_credentials=access.ui, api_credentials=access.api, allowed_origins=origins,
                      file_roots=(outputs, upload_dir.resolve()), image_only_roots=(outputs,),
                      max_body_bytes=upload_bytes * 4 // 3 + 2**20,  # base64 grows a file by 4/3; JSON around it
                      allowed_hosts=hosts + (machine_names() if args.listen else ()), any_address_host=args.listen,
                      missing_host_allowed=not exposed,
                      # Strict keeps the cookie off every request another site starts; a share link is mostly
                      # opened from another site (chat, mail), where Strict would show the login page each time.
                      session_cookie_samesite="lax" if args.share else "strict",
                      upload_folder=upload_dir.resolve() if owns_upload_dir else None,
                      upload_folder_max_bytes=max(2 * 2**30, 20 * upload_bytes))


def use_own_upload_folder(args: argparse.Namespace) -> tuple[Path, bool]:
    """Gradio's upload folder defaults to /tmp/gradio, shared by every Gradio app on the machine (one app would
    serve another's uploads): ours is <cache-dir>/uploads unless the operator chose one with GRADIO_TEMP_DIR.
    Returns (folder, whether it is ours). Must run before Gradio is imported (parts of it read the variable then)."""
    chosen = os.environ.get("GRADIO_TEMP_DIR")
    folder = Path(chosen) if chosen else args.cache_dir / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(folder.resolve())
    return folder.resolve(), not chosen


def trust_forwarded_headers(args: argparse.Namespace):
    """uvicorn believes X-Forwarded-For from 127.0.0.1 unless told otherwise, so behind a local tunnel every client
    could pick its own address (and escape the login throttle). Only the proxies the operator names are trusted;
    Gradio builds uvicorn's config without this setting, so uvicorn reads it from FORWARDED_ALLOW_IPS."""
    import ipaddress

    proxies = [item.strip() for item in args.forwarded_allow_ips.split(",") if item.strip()]
    for proxy in proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise SystemExit(f"--forwarded-allow-ips: '{proxy}' is not an IP address or network") from None
    os.environ["FORWARDED_ALLOW_IPS"] = ",".join(proxies)


def allow_share_host(page, policy):
    """The share tunnel's host name is known once the tunnel is up: the guard is rebuilt with it allowed."""
    from urllib.parse import urlsplit

    from backend.http.security import HttpSecurityMiddleware

    host = urlsplit(page.share_url or "").hostname
    if not host:
        return
    app = page.server_app
    for middleware in app.user_middleware:
        if middleware.cls is HttpSecurityMiddleware:
            middleware.kwargs["policy"] = dataclasses.replace(policy, allowed_hosts=(*policy.allowed_hosts, host))
    app.middleware_stack = app.build_middleware_stack()


def server_folder_access(args: argparse.Namespace) -> str | None:
    """Why jobs may not read folders on the server (None: they may): a remote user could otherwise read any image
    the server's account can."""
    if (args.listen or args.share) and not args.enable_server_folders:
        return ("reading folders on the server is off while it is reachable from other machines (--listen/--share); "
                "upload the images instead, or start with --enable-server-folders")
    return None


def settings_from_args(args: argparse.Namespace):
    from backend.core.settings import Settings
    from backend.plugins.installer import extension_access

    return Settings(models_dir=args.models_dir, ckpt_dir=args.ckpt_dir, lora_folder=args.lora_dir,
                    vae_folder=args.vae_dir, embeddings_folder=args.embeddings_dir, outputs_dir=args.outputs_dir,
                    extensions_dir=args.extensions_dir,
                    extension_install_refused=extension_access(args.listen, args.share,
                                                               args.enable_insecure_extension_access),
                    server_folders_refused=server_folder_access(args), reachable_from_network=args.listen or args.share,
                    cache_dir=args.cache_dir, startup_checkpoint=args.ckpt, device=args.device,
                    precision=args.precision, xformers=args.xformers, max_models_in_memory=args.max_models,
                    max_cache_gb=args.max_cache_gb, offline=os.environ.get("HF_HUB_OFFLINE") == "1",
                    upscale_tile_size=args.upscale_tile_size, upscale_tile_overlap=args.upscale_tile_overlap,
                    max_upscale_size=args.max_upscale_size, compile_unet=args.compile, vae_tiling=args.tiled_vae,
                    offload="model" if args.medvram else "sequential" if args.lowvram else "none",
                    compile_cache_dir=Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])  # the operator's choice wins
                    if os.environ.get("TORCHINDUCTOR_CACHE_DIR") else None,
                    command_flags={name: str(value) if isinstance(value, Path) else value
                                   for name, value in vars(args).items()})


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    on_stop_signals(stop)  # before launching: a Ctrl-C while the model libraries load stops once they have
    page, services = launch(parse_args(argv))
    try:
        while not stop.wait(0.5):
            pass
    finally:
        shut_down(page, services)


def on_stop_signals(stop: threading.Event):
    """Ctrl-C and SIGTERM ask for a clean stop; a second one while stopping exits at once."""
    def handle(number, _frame):
        if stop.is_set():
            os._exit(130)
        logging.info("%s: stopping (interrupting the running job; press Ctrl-C again to quit at once)",
                     signal.Signals(number).name)
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)


def shut_down(page, services):
    """Stop the jobs first (nothing is saved after this), then the web server, then the history; then leave at
    once. Background threads (the first model load, an upscaler scan) may still be inside torch, and letting
    the interpreter tear down around them aborts the process ("terminate called without an active exception");
    everything that needs an orderly end has had it by then."""
    stopped = services.close(STOP_TIMEOUT_SECONDS)
    page.close(verbose=False)
    if stopped:
        logging.info("stopped")
    else:
        logging.warning("the running job did not stop within %ss; exiting anyway", STOP_TIMEOUT_SECONDS)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0 if stopped else 1)


def launch(args: argparse.Namespace):
    """Build the services and the page and start serving; returns (page, services) without blocking."""
    access = access_from_args(args)
    settings = settings_from_args(args)  # before the heavy imports: torch may set TORCHINDUCTOR_CACHE_DIR itself
    upload_dir, owns_upload_dir = use_own_upload_folder(args)
    policy = http_policy(args, access, settings.outputs_dir, upload_dir, owns_upload_dir)
    trust_forwarded_headers(args)
    host = "0.0.0.0" if args.listen else "127.0.0.1"
    require_free_port(host, args.port)  # before minutes of start-up work, not after

    from backend.models.loader import MODEL_LIBRARIES, import_model_libraries
    from backend.services import build_services
    from ui.layout import FOOTER_LINKS, PAGE_CSS, build_ui, drop_gradio_cors

    settings.outputs_dir.mkdir(parents=True, exist_ok=True)
    limit_decoded_images()
    services = build_services(settings, start_worker=False, pool=worker_pool(args, settings))
    page = build_ui(services, mcp=args.mcp, api_docs=args.api)
    page.queue(default_concurrency_limit=None)
    page.delete_cache = (3600, 86400)  # hourly, Gradio deletes the files it made for this page over a day old
    try:
        # quiet: Gradio's own lines tell a library user to edit launch(); announce_urls says it with our flags
        page.launch(server_name=host, server_port=args.port, share=args.share, quiet=True,
                    auth=list(access.ui) or None, allowed_paths=[str(settings.outputs_dir.resolve())], show_error=True,
                    mcp_server=args.mcp, prevent_thread_lock=True, max_file_size=int(args.max_upload_mb * 2**20),
                    app_kwargs=app_kwargs(args, services, access, policy),
                    head=services.extensions.page_head() or None, css_paths=[PAGE_CSS], footer_links=FOOTER_LINKS)
    except OSError as error:
        services.close()
        if "Cannot find empty port" in str(error):  # taken since require_free_port looked
            raise SystemExit(port_in_use_message(args.port)) from None
        raise
    drop_gradio_cors(page)
    allow_share_host(page, policy)
    announce_urls(args, page)
    announce_access(args, access)
    # The model libraries are imported once the page answers (seconds the page need not wait for), here in this
    # thread, before the job worker and the first model load start: importing them from two threads at once fails.
    services.construction.once(MODEL_LIBRARIES, import_model_libraries)
    services.jobs.start()
    threading.Thread(target=_preload, args=(services,), daemon=True).start()
    return page, services


def port_in_use_message(port: int) -> str:
    return f"Port {port} is already in use (is the WebUI already running?); start with --port N to use another port"


def require_free_port(host: str, port: int):
    from backend.http.server_addresses import port_is_free

    if not port_is_free(host, port):
        raise SystemExit(port_in_use_message(port))  # one line on stderr, exit code 1


def announce_urls(args: argparse.Namespace, page):
    """Where to open the page: localhost, and with --listen the addresses other machines use (0.0.0.0 is where
    the server listens, not an address to open)."""
    from backend.http.server_addresses import network_addresses

    lines = [f"Running on local URL:  http://127.0.0.1:{args.port}"]
    if args.listen:
        lines += [f"Running on network URL:  http://{address}:{args.port}" for address in network_addresses()]
    if not args.share:  # with --share, Gradio prints the public URL itself
        lines.append("To create a public link, start with --share.")
    if getattr(page, "mcp_error", None):
        lines.append(str(page.mcp_error))
    print("\n".join(lines), flush=True)


def limit_decoded_images():
    """Pillow refuses, from the header, images over twice MAX_IMAGE_PIXELS; set so that this happens at our input
    limit everywhere, also where Gradio decodes an upload itself (the inpainting editor)."""
    from PIL import Image

    from backend.core.image_input import MAX_INPUT_PIXELS

    Image.MAX_IMAGE_PIXELS = MAX_INPUT_PIXELS // 2


def app_kwargs(args: argparse.Namespace, services, access: Access, policy) -> dict:
    """What Gradio passes to its FastAPI app: our routes, given to the constructor so they answer from the first
    request on, and the middleware that guards every route (ours and Gradio's)."""
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware

    from backend.http.security import HttpSecurityMiddleware

    routes = []
    if args.api:
        from backend.http.routes import build_api_router, build_controlnet_router

        routes += build_api_router(services, list(access.api) or None).routes
        routes += build_controlnet_router(services, list(access.api) or None).routes
        logging.info("REST API at /sdapi/v1, documentation at /docs")
    if services.extensions.hooks.routes:
        from backend.http.routes import build_extension_router

        routes += build_extension_router(services, list(access.api) or None).routes
    # Starlette's CORS middleware with only the origins the operator named (none by default); its presence also
    # turns off Gradio's own, which allows any origin when the server is reached by a non-localhost name.
    cors = Middleware(CORSMiddleware, allow_origins=list(policy.allowed_origins), allow_credentials=True,
                      allow_methods=["*"], allow_headers=["*"])
    return {"docs_url": "/docs", "redoc_url": "/redoc", "routes": routes,
            "middleware": [cors, Middleware(HttpSecurityMiddleware, policy=policy)]}


def _preload(services):
    try:  # --ckpt or the first checkpoint that loads; files that do not load are logged and skipped
        entry = services.models.load_default()
        if entry is not None:
            logging.info("ready: %s", entry.title)
    except Exception:  # the app stays up; the UI shows the error when a model is used
        logging.exception("could not load a checkpoint")
    try:  # detect the upscaler files now (cached on disk afterwards), not when a user first opens a list
        logging.info("upscalers: %s", ", ".join(services.upscalers.names()))
    except Exception as error:
        logging.error("could not scan the upscaler folders: %s", error)


if __name__ == "__main__":
    main()
