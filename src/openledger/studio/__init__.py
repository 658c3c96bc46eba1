"""Studio: the no-code web app over the SDK (datanets, training, chat, rewards).

::

    from openledger.studio import StudioConfig, run_studio
    run_studio(StudioConfig(home="./studio"))       # or: openledger studio --home ./studio

A FastAPI app with a small page (plain HTML and JavaScript, served from the package). It
calls the SDK in process and keeps its work in ``home``: ``datanets/``, ``adapters/``,
``accounts/`` and ``models/``, which notebooks and scripts open with the SDK as usual.
Needs the ``[server]`` extra (FastAPI, uvicorn). Listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

from openledger.studio.config import DEFAULT_MAX_UPLOAD_BYTES, StudioConfig, is_loopback
from openledger.studio.server import create_app, run_studio

__all__ = ["DEFAULT_MAX_UPLOAD_BYTES", "StudioConfig", "create_app", "is_loopback", "run_studio"]
