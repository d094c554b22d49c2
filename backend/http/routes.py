"""A1111's REST API under /sdapi/v1, served from the same job queue as the web UI: one router assembled from the
routes_* modules (one per resource), plus the extensions' routes under /extensions/."""
from __future__ import annotations

from fastapi import APIRouter, Depends

from backend.http.auth import basic_auth
from backend.http.bodies import ApiError
from backend.http.json_guard import refuse_unanswerable_json
from backend.http.routes_controlnet import add_controlnet_routes
from backend.http.routes_generation import add_generation_routes
from backend.http.routes_models import add_model_routes
from backend.http.routes_options import add_options_routes
from backend.http.routes_progress import add_progress_routes
from backend.http.routes_scripts import add_script_routes
from backend.http.routes_server import add_server_routes
from backend.http.routes_upscaling import add_upscaling_routes
from backend.services import Services


def build_api_router(services: Services, auth: list[tuple[str, str]] | None = None) -> APIRouter:
    # Bad input and what this version cannot do both answer 422 with a `detail` naming the field (never a 5xx).
    api = APIRouter(prefix="/sdapi/v1", dependencies=[*basic_auth(auth), Depends(refuse_unanswerable_json)],
                    tags=["sdapi"], responses={
                        422: {"model": ApiError, "description": "Invalid or unsupported input"},
                        429: {"model": ApiError, "description": "This client has too many jobs queued or running"}})
    for add_routes in (add_generation_routes, add_upscaling_routes, add_progress_routes, add_options_routes,
                       add_model_routes, add_script_routes, add_server_routes):
        add_routes(api, services)
    return api


def build_controlnet_router(services: Services, auth: list[tuple[str, str]] | None = None) -> APIRouter:
    """sd-webui-controlnet's routes, at the root as the extension serves them, behind the API's credentials."""
    router = APIRouter(prefix="/controlnet", dependencies=[*basic_auth(auth), Depends(refuse_unanswerable_json)],
                       tags=["controlnet"], responses={422: {"model": ApiError, "description": "Invalid input"}})
    add_controlnet_routes(router, services)
    return router


def build_extension_router(services: Services, auth: list[tuple[str, str]] | None = None) -> APIRouter:
    """Extensions' REST routes, each under /extensions/<extension>/, behind the API's credentials."""
    router = APIRouter(prefix="/extensions", dependencies=[*basic_auth(auth), Depends(refuse_unanswerable_json)],
                       tags=["extensions"])
    for route in services.extensions.hooks.routes:
        path, endpoint, methods = route.value
        router.add_api_route(f"/{route.extension}/{path}", endpoint, methods=list(methods))
    return router
