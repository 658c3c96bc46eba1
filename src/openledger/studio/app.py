"""The Studio's ASGI app: the page, its static files, the tabs' APIs and error messages.

Every error reaches the page as ``{"error": message}``: an :class:`OpenLedgerError`'s own
message (status 400, 404 for something missing), or a plain sentence for anything else
(status 500, the traceback in the server's log only).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from openledger.exceptions import OpenLedgerError
from openledger.studio.config import StudioConfig
from openledger.studio.state import StudioState

__all__ = ["build_app"]

logger = logging.getLogger("openledger.studio")

STATIC = Path(__file__).parent / "static"


def build_app(config: StudioConfig) -> FastAPI:
    """Build the Studio app over the folder ``config.home`` (see :func:`create_app`)."""
    from openledger.studio import routes_chat, routes_datanets, routes_rewards, routes_train

    state = StudioState.from_config(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        state.attributions.cancel_all()
        for job in state.jobs.jobs.values():
            job.cancel_event.set()
        state.jobs.wait(timeout=30)
        await state.chat.close()
        state.rewards.close()

    app = FastAPI(title="openledger studio", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.studio = state
    for module in (routes_datanets, routes_train, routes_chat, routes_rewards):
        app.include_router(module.router)
    app.add_exception_handler(OpenLedgerError, _known_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(Exception, _unexpected_error)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "home": str(config.home)}

    return app


async def _known_error(request: Request, exc: Exception) -> JSONResponse:
    status = 404 if isinstance(exc, LookupError) else 400
    return JSONResponse({"error": str(exc), "kind": type(exc).__name__}, status_code=status)


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    parts = [f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in errors]
    return JSONResponse({"error": "; ".join(parts) or "bad request"}, status_code=422)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    message = f"the Studio hit an unexpected {type(exc).__name__}; the server log has details"
    return JSONResponse({"error": message, "kind": "internal"}, status_code=500)
