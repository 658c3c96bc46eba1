"""Per-answer attribution off the hot path: answers in the ledger -> contributors' shares.

The gateway keeps each adapter-served answer's ``(prompt, answer)`` texts beside its
receipt. :class:`AttributionWorker` scores them in batches with each adapter's persisted
:class:`~openledger.attribution.InfluenceIndex` (one forward and backward pass per batch,
:meth:`~openledger.attribution.InfluenceIndex.attribute_many`), writes one attribution
per (receipt, adapter) (the contributors' quantised shares, averaged over the receipt's
choices), and deletes the texts once every adapter of the receipt is credited, in one
transaction. An adapter without an index leaves its receipts waiting (settlement holds
them for a later window; nothing is dropped).

Run it from the shell (``openledger attribute --ledger PATH --index ADAPTER=INDEX``) or
inside the gateway (``attribution_indexes`` in the gateway settings), where it runs on
its own thread between requests.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from openledger.attribution.rewards import SHARE_UNITS
from openledger.exceptions import AttributionInputError
from openledger.gateway.ledger import ReceiptLedger
from openledger.gateway.receipts import SignedGatewayReceipt
from openledger.types import Hash32

if TYPE_CHECKING:
    from openledger.attribution import AttributionReport, InfluenceIndex

__all__ = ["AttributionPass", "AttributionWorker"]

logger = logging.getLogger("openledger.gateway")


@dataclass
class AttributionPass:
    """What one :meth:`AttributionWorker.run_once` did.

    Attributes:
        attributed: Receipts whose every adapter is now credited.
        answers: ``(prompt, answer)`` pairs scored.
        waiting: Receipts left for later: an adapter has no index here.
        missing_indexes: Adapter ids that had answers but no index.
    """

    attributed: int = 0
    answers: int = 0
    waiting: int = 0
    missing_indexes: set[Hash32] = field(default_factory=set)


class AttributionWorker:
    """Credits the ledger's pending answers with the adapters' influence indexes.

    Args:
        ledger: The gateway's ledger.
        indexes: ``{adapter folder: index folder}`` (each index built with
            :meth:`InfluenceIndex.build` ``(..., output_dir=...)`` for that adapter).
        batch_size: Answers scored per pass of the model.

    Raises:
        AttributionInputError: An adapter folder or index folder that cannot be opened.
    """

    def __init__(
        self,
        ledger: ReceiptLedger,
        indexes: Mapping[str, str] | Mapping[os.PathLike[str], os.PathLike[str]],
        *,
        batch_size: int = 16,
    ) -> None:
        from openledger.attribution.loading import open_adapter

        if batch_size < 1:
            raise AttributionInputError(f"batch_size must be >= 1, got {batch_size}")
        self.ledger = ledger
        self.batch_size = batch_size
        self._folders: dict[Hash32, tuple[Path, Path]] = {}
        for adapter, index in indexes.items():
            found = open_adapter(adapter)
            if not (Path(index) / "index.json").is_file():
                raise AttributionInputError(f"{index} holds no influence index (no index.json)")
            self._folders[found.id] = (Path(adapter), Path(index))
        self._loaded: dict[Hash32, InfluenceIndex] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def adapter_ids(self) -> set[Hash32]:
        """The adapters this worker can credit."""
        return set(self._folders)

    def run_once(self, limit: int = 256) -> AttributionPass:
        """Credit up to ``limit`` pending receipts (oldest first).

        Raises:
            LedgerError: The ledger cannot be read or written.
        """
        done = AttributionPass()
        rows = self.ledger.read(
            "SELECT r.body, a.pairs FROM answers a JOIN receipts r USING (request_id) "
            "ORDER BY r.rowid LIMIT ?",
            (limit,),
        )
        pending = [
            (SignedGatewayReceipt.model_validate_json(body).receipt, json.loads(pairs))
            for body, pairs in rows
        ]
        credited = self._credited([r.request_id for r, _ in pending])
        work: dict[Hash32, list[tuple[Hash32, list[tuple[str, str]]]]] = {}
        for receipt, pairs in pending:
            for adapter_id in receipt.adapter_ids:
                if (receipt.request_id, adapter_id) in credited:
                    continue
                if adapter_id not in self._folders:
                    done.missing_indexes.add(adapter_id)
                    continue
                answers = [(str(p), str(c)) for p, c in pairs]
                work.setdefault(adapter_id, []).append((receipt.request_id, answers))
        for adapter_id, jobs in work.items():
            for start in range(0, len(jobs), self.batch_size):
                batch = jobs[start : start + self.batch_size]
                self._credit(adapter_id, batch)
                done.answers += sum(len(answers) for _, answers in batch)
        credited = self._credited([r.request_id for r, _ in pending])
        finished = []
        for receipt, _ in pending:
            if all((receipt.request_id, a) in credited for a in receipt.adapter_ids):
                finished.append((receipt.request_id,))
            else:
                done.waiting += 1
        if finished:  # NOTE: the texts go once every adapter of the receipt is credited
            with self.ledger.transaction() as conn:
                conn.executemany("DELETE FROM answers WHERE request_id = ?", finished)
        done.attributed = len(finished)
        return done

    def start(self, interval: float = 30.0) -> None:
        """Run :meth:`run_once` every ``interval`` seconds on a daemon thread."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._loop, args=(interval,), name="openledger-attribution", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread after the batch in progress."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self, interval: float) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                found = self.run_once()
                if found.attributed or found.waiting:
                    logger.info(
                        "attribution: %d receipts credited, %d waiting",
                        found.attributed,
                        found.waiting,
                    )
            except Exception:  # NOTE: a worker thread must outlive one bad batch; logged
                logger.exception("attribution pass failed; retrying in %.0f s", interval)
            self._stop.wait(max(0.0, interval - (time.monotonic() - started)))

    def _index(self, adapter_id: Hash32) -> InfluenceIndex:
        if adapter_id not in self._loaded:
            from openledger.attribution import InfluenceIndex

            adapter, index = self._folders[adapter_id]
            self._loaded[adapter_id] = InfluenceIndex.load(index, adapter)
        return self._loaded[adapter_id]

    def _credited(self, request_ids: list[Hash32]) -> set[tuple[Hash32, Hash32]]:
        if not request_ids:
            return set()
        marks = ",".join("?" * len(request_ids))
        rows = self.ledger.read(
            f"SELECT request_id, adapter_id FROM attributions WHERE request_id IN ({marks})",
            tuple(request_ids),
        )
        return {(Hash32(r), Hash32(a)) for r, a in rows}

    def _credit(
        self, adapter_id: Hash32, batch: list[tuple[Hash32, list[tuple[str, str]]]]
    ) -> None:
        """Score a batch of receipts' answers for one adapter and write their credits."""
        index = self._index(adapter_id)
        flat = [pair for _, answers in batch for pair in answers]
        reports = index.attribute_many(flat)
        snapshot_id = index.adapter.manifest.snapshot_id
        rows = []
        position = 0
        for request_id, answers in batch:
            mine = reports[position : position + len(answers)]
            position += len(answers)
            shares = json.dumps(_averaged(mine), sort_keys=True)
            m = index.manifest
            rows.append(
                (
                    request_id,
                    adapter_id,
                    m.snapshot_root,
                    m.datanet_id,
                    snapshot_id,
                    m.method,
                    shares,
                    int(time.time()),
                )
            )
        with self.ledger.transaction() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO attributions VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows
            )


def _averaged(reports: list[AttributionReport]) -> dict[str, dict[str, int]]:
    """The reports' quantised positive shares and penalties, averaged over the answers
    (integer division: the shares still sum to one share at most)."""
    weights: dict[str, int] = {}
    penalties: dict[str, int] = {}
    for report in reports:
        for account, weight in report.contributor_weights().items():
            weights[account] = weights.get(account, 0) + weight
        for account, score in report.penalties().items():
            units = round(-score * SHARE_UNITS)
            if units > 0:
                penalties[account] = penalties.get(account, 0) + units
    count = max(1, len(reports))
    return {
        "weights": {a: w // count for a, w in weights.items() if w // count > 0},
        "penalties": {a: p // count for a, p in penalties.items() if p // count > 0},
    }
