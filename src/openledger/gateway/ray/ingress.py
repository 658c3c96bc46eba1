"""The gateway's ingress on Ray Serve: the same application as ``openledger serve``.

One ingress replica holds what must be one: the ledger (every receipt, signed by the
operator key), the API keys, the fair queue across keys, the adapter registry and the
metrics. Its routes are the gateway's own (:func:`~openledger.gateway.app.build_app`)
over a :class:`~openledger.gateway.ray.RemoteEngine`, plus ``GET /v1/replicas`` (admin
keys): the engine replicas it has heard from, with their adapter loads.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from ray import serve

from openledger.gateway.app import build_app
from openledger.gateway.config import GatewayConfig
from openledger.gateway.ray.remote_engine import RemoteEngine
from openledger.gateway.server import build_state, restore_adapters

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle

    from openledger.gateway.state import GatewayState

__all__ = ["GatewayIngress"]


@serve.ingress()
class GatewayIngress:
    """The ingress deployment (its ASGI app is built once the replica has started).

    Args:
        config_json: The gateway's settings as JSON (paths absolute).
        engines: The engine replicas' deployment handle.
    """

    def __init__(self, config_json: str, engines: DeploymentHandle[Any]) -> None:
        self.config = GatewayConfig(**json.loads(config_json))
        self.engines = engines

    async def __serve_build_asgi_app__(self) -> FastAPI:
        """Ask a replica for its engine's limits, open the ledger, register the configured
        adapters and those the admin API had loaded before a restart."""
        config = self.config
        facts = await self.engines.describe.remote()
        remote = RemoteEngine(self.engines, facts, config.ray, config.engine)
        state = build_state(config, remote)
        try:
            for name, source in config.adapters.items():
                await state.adapters.put(name, source)
            await restore_adapters(state.adapters, state.ledger, config.adapters)
        except BaseException:
            await state.shutdown()
            raise
        app = build_app(state)
        _add_replica_route(app, state, remote)
        return app


def _add_replica_route(app: FastAPI, state: GatewayState, remote: RemoteEngine) -> None:
    @app.get("/v1/replicas")
    async def replicas(request: Request) -> dict[str, Any]:
        await state.authenticate_admin(request.headers.get("authorization"))
        now = time.time()
        data = [
            {
                "replica_id": replica_id,
                "pid": seen.info.pid,
                "node_id": seen.info.node_id,
                "adapter_loads": seen.info.adapter_loads,
                "resident": list(seen.info.resident),
                "requests": seen.requests,
                "seconds_since_seen": round(now - seen.last_seen, 3),
            }
            for replica_id, seen in sorted(remote.replicas.items())
        ]
        return {
            "object": "list",
            "data": data,
            "adapter_loads": remote.adapter_loads,
            "retried": remote.retried,
            "cut": remote.cut,
        }
