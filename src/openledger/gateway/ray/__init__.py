"""The gateway on Ray Serve: engine replicas behind one metering ingress.

::

    GatewayIngress (1 replica, on the head node)        EngineReplica x N (one engine each)
      OpenAI routes, keys, fair queue, metrics     --->   @serve.multiplexed adapters (LRU of
      RemoteEngine: one stream per choice,                adapters_per_replica), AsyncEngine
        retried on another replica until its              streaming RequestOutputs
        first token
      the ledger: every receipt, signed once

Requests for an adapter carry it as Ray Serve's multiplexed model id, and
:class:`AdapterAffinityRouter` sends every request for it to its one home replica;
replicas never meter. ``openledger serve --ray`` runs it on a local
Ray instance or joins a cluster (:func:`run_ray_server`); :func:`build_application` gives the
application to deploy yourself. Ray is the ``[ray]`` extra, imported only here, on use.
The guide is docs/deployment.md.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from openledger.exceptions import MissingDependencyError
from openledger.gateway.ray.config import RayServeConfig

if TYPE_CHECKING:
    from openledger.gateway.ray.deploy import build_application, run_ray_server
    from openledger.gateway.ray.remote_engine import RemoteEngine
    from openledger.gateway.ray.router import AdapterAffinityRouter

__all__ = [
    "AdapterAffinityRouter",
    "RayServeConfig",
    "RemoteEngine",
    "build_application",
    "require_ray_extra",
    "run_ray_server",
]

_LAZY = {
    "build_application": "openledger.gateway.ray.deploy",
    "run_ray_server": "openledger.gateway.ray.deploy",
    "RemoteEngine": "openledger.gateway.ray.remote_engine",
    "AdapterAffinityRouter": "openledger.gateway.ray.router",
}


def require_ray_extra() -> None:
    """Raise unless Ray Serve and the gateway's HTTP stack are installed.

    Raises:
        MissingDependencyError: Naming the extra to install.
    """
    missing = [n for n in ("ray", "fastapi", "prometheus_client") if _missing(n)]
    if not missing and _missing("ray.serve"):
        missing = ["ray[serve]"]
    if missing:
        raise MissingDependencyError(
            f"the gateway on Ray needs {', '.join(missing)}: pip install 'openledger[ray]'"
        )


def _missing(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is None
    except ModuleNotFoundError:
        return True


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    require_ray_extra()
    return getattr(importlib.import_module(module), name)
