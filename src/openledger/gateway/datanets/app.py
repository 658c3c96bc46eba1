"""The datanet service as an ASGI application: alone, or mounted in another app.

::

    service = DatanetService.open(["./medqa", "postgresql://db/datanets?datanet=law"])
    app = create_datanet_app(service)          # alone: /v1/datanets/..., /health
    mount_datanets(gateway_app, service)       # or beside the OpenAI API of `openledger serve`

Mounted, the service keeps its own error handlers (a refusal is a 4xx naming its reason)
and the host app's middleware; the host closes the service when it stops.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import FrameType
from typing import TYPE_CHECKING

from openledger._version import __version__
from openledger.exceptions import OpenLedgerError
from openledger.gateway.datanets.service import DatanetService

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = [
    "MOUNT_PATH",
    "create_datanet_app",
    "datanet_api",
    "mount_datanets",
    "run_datanet_server",
]

logger = logging.getLogger("openledger.gateway.datanets")

MOUNT_PATH = "/v1/datanets"
"""Where the datanet endpoints live."""


def datanet_api(service: DatanetService) -> FastAPI:
    """The datanet endpoints as one FastAPI app, with paths relative to :data:`MOUNT_PATH`."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from pydantic import ValidationError
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse, Response

    from openledger.gateway.datanets.errors import datanet_http_error
    from openledger.gateway.datanets.routes import add_datanet_routes
    from openledger.gateway.wire import error_payload

    api = FastAPI(title="openledger datanets", version=__version__)

    # NOTE: refusals get handlers of their own: starlette re-raises what reaches the
    # catch-all Exception handler after answering, so only real failures get there.
    async def refused(request: Request, exc: Exception) -> Response:
        error = datanet_http_error(exc)
        return JSONResponse(dict(error.body), status_code=error.status)

    for kind in (OpenLedgerError, ValidationError, Exception):
        api.add_exception_handler(kind, refused)

    @api.exception_handler(HTTPException)
    async def http(request: Request, exc: HTTPException) -> Response:
        code = "not_found" if exc.status_code == 404 else None
        body = error_payload(str(exc.detail), "invalid_request_error", None, code)
        return JSONResponse(dict(body), status_code=exc.status_code)

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        param = ".".join(str(p) for p in errors[0]["loc"]) if errors else None
        body = error_payload(str(exc), "invalid_request_error", param, "invalid_request")
        return JSONResponse(dict(body), status_code=400)

    add_datanet_routes(api, service)
    return api


def mount_datanets(app: FastAPI, service: DatanetService) -> FastAPI:
    """Serve ``service`` under :data:`MOUNT_PATH` of ``app`` (e.g. the gateway's); return it."""
    app.mount(MOUNT_PATH, datanet_api(service))
    return app


def create_datanet_app(service: DatanetService) -> FastAPI:
    """The datanet service alone: its endpoints under :data:`MOUNT_PATH`, ``GET /health``;
    its shutdown closes the hosted datanets.

    Raises:
        MissingDependencyError: The ``[server]`` extra is not installed.
    """
    from openledger.gateway.server import require_server_extra

    require_server_extra()
    from fastapi import FastAPI

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(title="openledger datanets", version=__version__, lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return mount_datanets(app, service)


def run_datanet_server(
    service: DatanetService, *, host: str = "127.0.0.1", port: int = 8100, log_level: str = "info"
) -> None:
    """Serve ``service`` on ``host``:``port`` with uvicorn until SIGTERM or Ctrl-C.

    Raises:
        MissingDependencyError: The ``[server]`` extra is not installed.
    """
    import uvicorn

    app = create_datanet_app(service)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False)
    # NOTE: uvicorn re-raises the signal that stopped it once it is done; a handler of ours
    # takes it, so a clean shutdown exits 0 instead of dying by SIGTERM.
    previous = {sig: signal.signal(sig, _stopped) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        uvicorn.Server(config).run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stopped(sig: int, frame: FrameType | None) -> None:
    logger.info("signal %d handled: the datanet service has stopped", sig)
