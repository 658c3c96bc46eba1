"""Adapter affinity: each adapter (or mix) key has one home replica, chosen once.

Ray Serve's multiplexed routing learns where a key is resident from the replicas' reports
(every 0.1 s) and picks among matching replicas at random, so a burst of requests for a
new key lands on several replicas and each loads it. :class:`AdapterAffinityRouter`
decides in the ingress instead, before anything is loaded::

    request for key k
      k has a home among the live replicas  -> send it there
      else                                 -> home(k) = the live replica with the fewest
                                              homed keys (ties: the shorter queue, then
                                              the replica id); send it there
      the home has 2+ keys more than another  -> k moves to that replica (one load there;
                                              this rebalances after a replica is added
                                              or restarted)
      the home is full (max_ongoing_requests) and spill is on -> the others, fewest keys
                                              first (the home stays the home)

Keys are thereby spread evenly: with ``K`` keys on ``R`` replicas of ``S`` adapter slots,
a replica thrashes only when ``K / R > S``, and then over ``K / R`` keys instead of ``K``.
A replica that dies loses its keys, which find new homes on their next request. Requests
without a key (the base model) go to the shortest queue (ties at random). Requests are
routed in the order each one's own routing finishes (no FIFO hand-over between keys,
which would send a request to another key's home).
"""

from __future__ import annotations

import random
from collections import Counter, OrderedDict
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

__all__ = ["AdapterAffinityRouter"]


class AdapterAffinityRouter(RequestRouter):
    """Routes each multiplexed key to its home replica (see the module docstring).

    Configured through ``request_router_kwargs``: ``spill`` (bool, default True): when the
    home replica is at ``max_ongoing_requests``, try the other replicas rather than wait;
    ``max_homes`` (int, default 4096): keys remembered, the least recently routed
    forgotten first (a forgotten key gets a home again on its next request, as a new one
    does). Keys come and go (adapter versions, weighted mixes), so the map is bounded.
    """

    def initialize_state(self, spill: bool = True, max_homes: int = 4096, **kwargs: Any) -> None:
        """Set the router's own state (Ray Serve calls this once, with the kwargs)."""
        if max_homes < 1:
            raise ValueError(f"max_homes must be at least 1, got {max_homes}")
        self.spill = bool(spill)
        self.max_homes = int(max_homes)
        self.homes: OrderedDict[str, ReplicaID] = OrderedDict()

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        """Ranks of replicas to try for ``pending_request``: its home first."""
        if not candidate_replicas:
            return []
        key = pending_request.metadata.multiplexed_model_id if pending_request else ""
        live = {replica.replica_id: replica for replica in candidate_replicas}
        if not key:
            shuffled = random.sample(candidate_replicas, len(candidate_replicas))
            return [sorted(shuffled, key=self._queue)]
        keys = self._keys_per_replica(live)
        home = self.homes.get(key)
        fewest = self._fewest(live, keys)
        if home not in live or keys[home] > keys[fewest] + 1:
            home = self.homes[key] = fewest
            keys = self._keys_per_replica(live)
        self.homes.move_to_end(key)
        while len(self.homes) > self.max_homes:
            self.homes.popitem(last=False)
        if not self.spill:
            return [[live[home]]]
        others = sorted(
            (r for rid, r in live.items() if rid != home),
            key=lambda r: (keys[r.replica_id], self._queue(r), r.replica_id.unique_id),
        )
        return [[live[home]], others] if others else [[live[home]]]

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        """Forget the homes on a dead replica (their keys find new ones)."""
        super().on_replica_actor_died(replica_id)
        self.homes = OrderedDict((k, rid) for k, rid in self.homes.items() if rid != replica_id)

    def _fewest(self, live: dict[ReplicaID, RunningReplica], keys: Counter[ReplicaID]) -> ReplicaID:
        """The live replica with the fewest homed keys (ties: shorter queue, then id)."""
        chosen = min(
            live.values(),
            key=lambda r: (keys[r.replica_id], self._queue(r), r.replica_id.unique_id),
        )
        return chosen.replica_id

    def _keys_per_replica(self, live: dict[ReplicaID, RunningReplica]) -> Counter[ReplicaID]:
        counts: Counter[ReplicaID] = Counter({rid: 0 for rid in live})
        counts.update(rid for rid in self.homes.values() if rid in live)
        return counts

    def _queue(self, replica: RunningReplica) -> int:
        """The replica's last known queue length (0 when not probed yet)."""
        found = self._replica_queue_len_cache.get(replica.replica_id)
        return 0 if found is None else int(found)
