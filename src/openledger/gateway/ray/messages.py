"""What the ingress and the engine replicas send each other (picklable, no Ray)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from openledger.types import Hash32

__all__ = ["AdapterSource", "EngineFacts", "ReplicaInfo", "adapter_key"]


@dataclass(frozen=True, slots=True)
class AdapterSource:
    """One adapter version as the ingress registered it: where a replica loads it from.

    Attributes:
        engine_name: Its registration name, ``<name>@<serial>``.
        source: Folder, ``hf://`` or https archive (reachable from every replica's node).
        sha256: The archive's pin, if any.
        adapter_id: The id the ingress validated and meters; a replica refuses weights
            that are not this adapter.
    """

    engine_name: str
    source: str
    sha256: str | None
    adapter_id: Hash32


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    """A replica's identity and adapter counters, sent before each stream's outputs.

    Attributes:
        replica_id: Ray Serve's id of the replica (a new one after a restart).
        pid: Its process.
        node_id: Its Ray node.
        adapter_loads: Adapters it has loaded since it started.
        resident: Adapter registrations it holds now.
    """

    replica_id: str
    pid: int
    node_id: str
    adapter_loads: int
    resident: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EngineFacts:
    """What the ingress needs to know of one replica's engine to plan requests.

    Attributes:
        max_model_len: Longest prompt + output.
        max_num_seqs: Sequences one engine runs at once.
        adapter_slots: Its device slots for adapters.
        tokenizer: The base model's tokenizer (token-id prompts, logprobs).
    """

    max_model_len: int
    max_num_seqs: int
    adapter_slots: int
    tokenizer: Any


def adapter_key(engine_names: tuple[str, ...] | list[str]) -> str:
    """The multiplexed model id of a request's adapters: their registrations, sorted,
    joined by ``+`` (which no registration name holds); ``""`` for the base model."""
    return "+".join(sorted(engine_names))
