"""Building the Studio app and running it on uvicorn."""

from __future__ import annotations

import importlib.util
import logging
from typing import TYPE_CHECKING

from openledger.exceptions import MissingDependencyError
from openledger.studio.config import StudioConfig

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["create_app", "run_studio"]

logger = logging.getLogger("openledger.studio")


def _require_server_extra() -> None:
    missing = [n for n in ("fastapi", "uvicorn") if importlib.util.find_spec(n) is None]
    if missing:
        raise MissingDependencyError(
            f"the Studio needs {', '.join(missing)}: pip install 'openledger[server]'"
        )


def create_app(config: StudioConfig | None = None) -> FastAPI:
    """Build the Studio's ASGI app (FastAPI) over the folder ``config.home``.

    Args:
        config: Settings; defaults when None.

    Returns:
        The application; :func:`run_studio` serves it with uvicorn.

    Raises:
        MissingDependencyError: FastAPI or uvicorn (the ``[server]`` extra) is missing.
    """
    _require_server_extra()
    from openledger.studio.app import build_app

    return build_app(config or StudioConfig())


def run_studio(config: StudioConfig | None = None) -> None:
    """Serve the Studio until interrupted (Ctrl-C or SIGTERM); a cancelled training run
    leaves nothing behind.

    Raises:
        MissingDependencyError: FastAPI or uvicorn is missing.
        ConfigError: A non-loopback host without ``allow_remote`` (raised by
            :class:`StudioConfig`).
    """
    import uvicorn

    config = config or StudioConfig()
    app = create_app(config)
    logger.warning(
        "openledger studio on http://%s:%d (home %s)", config.host, config.port, config.home
    )
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
