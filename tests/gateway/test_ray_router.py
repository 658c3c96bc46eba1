"""AdapterAffinityRouter's decisions, without a Ray cluster: homes, rebalancing, spill,
dead replicas and the bound on remembered keys."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("ray.serve", reason="the ray extra is not installed")

from ray.serve._private.common import DeploymentID, ReplicaID

from openledger.gateway.ray.router import AdapterAffinityRouter

DEPLOYMENT = DeploymentID(name="EngineReplica", app_name="openledger")


def replica(name: str) -> Any:
    return SimpleNamespace(replica_id=ReplicaID(unique_id=name, deployment_id=DEPLOYMENT))


def router(replicas: list[Any], queues: dict[str, int] | None = None, **kwargs: Any) -> Any:
    made = AdapterAffinityRouter.__new__(AdapterAffinityRouter)
    made.initialize_state(**kwargs)
    made._replica_queue_len_cache = {
        r.replica_id: n
        for r in replicas
        for name, n in (queues or {}).items()
        if r.replica_id.unique_id == name
    }
    made._replicas = {r.replica_id: r for r in replicas}
    made._replicas_list = list(replicas)
    made._replica_id_set = {r.replica_id for r in replicas}
    made._queue_len_gauge_last_update = {}
    return made


def ranks(made: Any, replicas: list[Any], key: str) -> list[list[str]]:
    pending = SimpleNamespace(metadata=SimpleNamespace(multiplexed_model_id=key))
    chosen = asyncio.run(made.choose_replicas(replicas, pending))
    return [[r.replica_id.unique_id for r in rank] for rank in chosen]


def test_each_key_keeps_one_home_and_keys_spread_evenly() -> None:
    replicas = [replica("r0"), replica("r1"), replica("r2")]
    made = router(replicas)
    homes = {key: ranks(made, replicas, key)[0] for key in ("a", "b", "c", "d", "e", "f")}
    assert all(len(home) == 1 for home in homes.values())
    per_replica = sorted(sum(1 for h in homes.values() if h == [r]) for r in ("r0", "r1", "r2"))
    assert per_replica == [2, 2, 2]
    for key, home in homes.items():  # NOTE: asked again, the same home, others ranked after
        first, others = ranks(made, replicas, key)
        assert first == home
        assert sorted(first + others) == ["r0", "r1", "r2"]


def test_without_spill_only_the_home_is_offered() -> None:
    replicas = [replica("r0"), replica("r1")]
    made = router(replicas, spill=False)
    assert len(ranks(made, replicas, "a")) == 1


def test_a_key_without_adapters_goes_to_the_shortest_queue() -> None:
    replicas = [replica("r0"), replica("r1"), replica("r2")]
    made = router(replicas, queues={"r0": 5, "r1": 0, "r2": 3})
    assert ranks(made, replicas, "") == [["r1", "r2", "r0"]]
    assert made.homes == {}


def test_a_dead_replicas_keys_find_new_homes() -> None:
    replicas = [replica("r0"), replica("r1")]
    made = router(replicas)
    home = ranks(made, replicas, "a")[0][0]
    dead = next(r for r in replicas if r.replica_id.unique_id == home)
    made.on_replica_actor_died(dead.replica_id)
    alive = [r for r in replicas if r is not dead]
    assert ranks(made, alive, "a")[0] == [alive[0].replica_id.unique_id]
    assert "a" in made.homes


def test_an_added_replica_takes_keys_from_a_crowded_one() -> None:
    one = [replica("r0")]
    made = router(one)
    for key in "abcd":
        ranks(made, one, key)
    both = [*one, replica("r1")]
    moved = [key for key in "abcd" if ranks(made, both, key)[0] == ["r1"]]
    # NOTE: a key moves while its home has 2+ more keys than the other replica
    assert len(moved) == 2
    counts = sorted(list(made.homes.values()).count(r.replica_id) for r in both)
    assert counts == [2, 2]


def test_remembered_keys_are_bounded_least_recently_routed_first() -> None:
    replicas = [replica("r0"), replica("r1")]
    made = router(replicas, max_homes=3)
    for key in ("a", "b", "c"):
        ranks(made, replicas, key)
    ranks(made, replicas, "a")  # NOTE: "a" routed again: "b" is now the oldest
    ranks(made, replicas, "d")
    assert list(made.homes) == ["c", "a", "d"]
    with pytest.raises(ValueError, match="max_homes"):
        router(replicas, max_homes=0)
