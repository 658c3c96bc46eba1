"""How the gateway runs on Ray Serve: replicas, their resources, adapter routing.

The ``ray`` section of a gateway's settings (:class:`~openledger.gateway.GatewayConfig`)::

    ray:
      address: null            # null: a local Ray instance; "auto" or ray://head:10001 joins one
      replicas: 2              # engine replicas, one engine each
      num_cpus: 1              # per replica
      num_gpus: 0              # per replica (1 on a GPU node)
      adapters_per_replica: 8  # adapters resident per replica (default: the engine's slots)

This module imports no Ray: settings are read and checked before Ray is loaded.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["RayServeConfig"]


class RayServeConfig(BaseModel):
    """Where and how many engine replicas run behind the gateway's Ray Serve ingress."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    address: str | None = Field(
        default=None,
        description="Ray cluster to join ('auto', 'ray://head:10001', 'host:6379'); None "
        "starts a local Ray instance that stops with the gateway.",
    )
    replicas: int = Field(default=1, ge=1, description="Engine replicas (one engine each).")
    num_cpus: float = Field(default=1.0, ge=0, description="CPU cores reserved per replica.")
    num_gpus: float = Field(default=0.0, ge=0, description="GPUs reserved per replica.")
    adapters_per_replica: int | None = Field(
        default=None,
        ge=1,
        description="Adapters (or mixes) resident per replica, least recently used leave "
        "first: Ray Serve's max_num_models_per_replica. None: the engine's adapter slots.",
    )
    max_ongoing_requests: int | None = Field(
        default=None,
        ge=1,
        description="Engine requests (choices) one replica takes at once before Ray routes "
        "elsewhere or queues. None: twice the engine's max_num_seqs.",
    )
    routing: Literal["adapter", "multiplex", "any"] = Field(
        default="adapter",
        description="'adapter': each adapter (or mix) has one home replica, the live one "
        "with the fewest when first asked for (AdapterAffinityRouter); 'multiplex': Ray "
        "Serve's multiplexed routing (replicas reporting the adapter resident, else any); "
        "'any': Ray's default routing. The last two are for comparison.",
    )
    spill: bool = Field(
        default=True,
        description="With routing='adapter': a request whose home replica is at "
        "max_ongoing_requests tries the others instead of waiting for it.",
    )
    retries: int = Field(
        default=2,
        ge=0,
        description="Tries on another replica for a request whose replica was lost before "
        "it produced a token; then the client gets a retryable 503.",
    )
    retry_backoff: float = Field(
        default=0.25, ge=0, description="Seconds before the first retry (doubling after)."
    )
    ingress_num_cpus: float = Field(
        default=1.0, ge=0, description="CPU cores reserved for the ingress (HTTP, metering)."
    )
    ingress_on_head: bool = Field(
        default=True,
        description="Run the ingress, and so the ledger and the operator key, on Ray's head "
        "node (where the gateway's files are); off: any node with the files.",
    )
    app_name: str = Field(default="openledger", description="The Ray Serve application's name.")

    def local_cpus(self) -> int:
        """CPU resources to give a local Ray instance: the replicas' and the ingress's."""
        return max(1, math.ceil(self.replicas * self.num_cpus + self.ingress_num_cpus))
