"""Per-answer attribution off the hot path: answers in the ledger -> contributors' shares.

The gateway keeps each adapter-served answer's ``(prompt, answer)`` texts beside its
receipt. :class:`AttributionWorker` scores them in batches with each adapter's persisted
index, an :class:`~openledger.attribution.InfluenceIndex` (one forward and backward pass
per batch, :meth:`~openledger.attribution.InfluenceIndex.attribute_many`) or a
:class:`~openledger.attribution.SpanIndex` of its snapshot (milliseconds per answer),
writes one attribution per (receipt, adapter) (the contributors' quantised shares,
averaged over the receipt's choices), and deletes the texts once every adapter of the
receipt is credited. With a sample rate below one, only a verifiable draw of receipts is
scored and the rest get the drawn ones' mean per window, with a confidence interval (see
:mod:`openledger.gateway.attribution_policy`). An adapter without an index leaves its
receipts waiting (settlement holds them for a later window; nothing is dropped).

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from openledger.exceptions import AttributionInputError
from openledger.gateway.attribution_policy import AttributionSource, averaged, estimate, sampled
from openledger.gateway.ledger import ReceiptLedger
from openledger.gateway.receipts import GatewayReceipt, SignedGatewayReceipt
from openledger.types import Hash32

if TYPE_CHECKING:
    from openledger.attribution import InfluenceIndex
    from openledger.train import Adapter

__all__ = ["AttributionPass", "AttributionWorker", "record_attributions"]

logger = logging.getLogger("openledger.gateway")

ESTIMATED = "sample"
"""The ``method`` of an attribution estimated from a window's scored receipts."""

Job = tuple[GatewayReceipt, list[tuple[str, str]]]


@dataclass
class AttributionPass:
    """What one :meth:`AttributionWorker.run_once` did.

    Attributes:
        attributed: Receipts whose every adapter is now credited.
        answers: ``(prompt, answer)`` pairs scored.
        estimated: (receipt, adapter) credits estimated from the scored sample.
        waiting: Receipts left for later: an adapter has no index here, or the window of an
            unsampled receipt is still open.
        missing_indexes: Adapter ids that had answers but no index.
    """

    attributed: int = 0
    answers: int = 0
    estimated: int = 0
    waiting: int = 0
    missing_indexes: set[Hash32] = field(default_factory=set)


class AttributionWorker:
    """Credits the ledger's pending answers with the adapters' indexes.

    Args:
        ledger: The gateway's ledger.
        indexes: ``{adapter folder: index folder}``: an influence index built with
            :meth:`InfluenceIndex.build` ``(..., output_dir=...)`` for that adapter, or a
            span index (:meth:`SpanIndex.save`) of the snapshot it was trained on; or the
            :class:`InfluenceIndex` itself, when this process has just built it (saved
            with ``output_dir``).
        batch_size: Answers scored per pass of the model.
        sample: Fraction of each adapter's receipts scored: one rate, or ``{adapter
            folder: rate}`` (1 for folders not named).

    Raises:
        AttributionInputError: An adapter or index folder that cannot be opened, or a
            rate outside (0, 1].
    """

    def __init__(
        self,
        ledger: ReceiptLedger,
        indexes: Mapping[str, str]
        | Mapping[os.PathLike[str], os.PathLike[str]]
        | Mapping[str, InfluenceIndex],
        *,
        batch_size: int = 16,
        sample: float | Mapping[str, float] = 1.0,
    ) -> None:
        from openledger.attribution.loading import open_adapter

        if batch_size < 1:
            raise AttributionInputError(f"batch_size must be >= 1, got {batch_size}")
        self.ledger = ledger
        self.batch_size = batch_size
        self._sources: dict[Hash32, tuple[Adapter, AttributionSource]] = {}
        self._scorers: dict[Hash32, Any] = {}
        for adapter, index in indexes.items():
            rate = sample if isinstance(sample, (int, float)) else sample.get(str(adapter), 1.0)
            found = open_adapter(adapter)
            if isinstance(index, (str, os.PathLike)):
                source = AttributionSource.of(adapter, index, float(rate))
            else:  # NOTE: an InfluenceIndex already in memory (built in this process)
                source = AttributionSource.of(adapter, _folder_of(index), float(rate))
                if index.manifest.adapter_id != found.id:
                    raise AttributionInputError(
                        f"the index given for {adapter} is of adapter {index.manifest.adapter_id}"
                    )
                self._scorers[found.id] = index
            self._sources[found.id] = (found, source)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def adapter_ids(self) -> set[Hash32]:
        """The adapters this worker can credit."""
        return set(self._sources)

    def run_once(self, limit: int = 256, *, now: float | None = None) -> AttributionPass:
        """Credit up to ``limit`` pending receipts (oldest first).

        Args:
            limit: Most receipts read in this pass.
            now: Unix time, to tell which windows have closed (default now).

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
        closed = self._current_window(now)
        if pending and len(rows) == limit:  # NOTE: the last window read may go on past it
            closed = min(closed, pending[-1][0].epoch)
        credited = self._credited([r.request_id for r, _ in pending])
        drawn: dict[Hash32, list[Job]] = {}
        rest: dict[tuple[Hash32, int], list[Job]] = {}
        for receipt, pairs in pending:
            answers = [(str(p), str(c)) for p, c in pairs]
            for adapter_id in receipt.adapter_ids:
                if (receipt.request_id, adapter_id) in credited:
                    continue
                if adapter_id not in self._sources:
                    done.missing_indexes.add(adapter_id)
                elif sampled(receipt.request_id, self._sources[adapter_id][1].sample):
                    drawn.setdefault(adapter_id, []).append((receipt, answers))
                elif receipt.epoch < closed:
                    rest.setdefault((adapter_id, receipt.epoch), []).append((receipt, answers))
        for adapter_id, jobs in drawn.items():
            done.answers += self._score(adapter_id, jobs)
        for (adapter_id, epoch), jobs in rest.items():
            base = self._scored_shares(adapter_id, epoch)
            if not base:  # NOTE: nothing of this closed window was drawn: score one anyway
                done.answers += self._score(adapter_id, jobs[:1])
                base, jobs = self._scored_shares(adapter_id, epoch), jobs[1:]
            guess = estimate(base)
            self._write(adapter_id, [(r.request_id, guess) for r, _ in jobs], ESTIMATED)
            done.estimated += len(jobs)
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
                        "attribution: %d receipts credited (%d estimated), %d waiting",
                        found.attributed,
                        found.estimated,
                        found.waiting,
                    )
            except Exception:  # NOTE: a worker thread must outlive one bad batch; logged
                logger.exception("attribution pass failed; retrying in %.0f s", interval)
            self._stop.wait(max(0.0, interval - (time.monotonic() - started)))

    def _current_window(self, now: float | None) -> int:
        from openledger.gateway.settlement import ledger_settings

        seconds = ledger_settings(self.ledger).epoch_seconds
        return int(time.time() if now is None else now) // seconds

    def _scorer(self, adapter_id: Hash32) -> Any:
        if adapter_id not in self._scorers:
            adapter, source = self._sources[adapter_id]
            self._scorers[adapter_id] = source.scorer(adapter)
        return self._scorers[adapter_id]

    def _credited(self, request_ids: list[Hash32]) -> set[tuple[Hash32, Hash32]]:
        if not request_ids:
            return set()
        marks = ",".join("?" * len(request_ids))
        rows = self.ledger.read(
            f"SELECT request_id, adapter_id FROM attributions WHERE request_id IN ({marks})",
            tuple(request_ids),
        )
        return {(Hash32(r), Hash32(a)) for r, a in rows}

    def _score(self, adapter_id: Hash32, jobs: list[Job]) -> int:
        """Score the jobs' answers in batches and write their credits; returns pairs scored."""
        scorer = self._scorer(adapter_id)
        count = 0
        for start in range(0, len(jobs), self.batch_size):
            batch = jobs[start : start + self.batch_size]
            flat = [pair for _, answers in batch for pair in answers]
            reports = scorer.attribute_many(flat)
            rows, position = [], 0
            for receipt, answers in batch:
                mine = reports[position : position + len(answers)]
                rows.append((receipt.request_id, averaged(mine)))
                position += len(answers)
            self._write(adapter_id, rows, str(scorer.method))
            count += len(flat)
        return count

    def _write(
        self, adapter_id: Hash32, rows: list[tuple[Hash32, dict[str, Any]]], method: str
    ) -> None:
        adapter, _ = self._sources[adapter_id]
        record_attributions(self.ledger, adapter.manifest, rows, method)

    def _scored_shares(self, adapter_id: Hash32, epoch: int) -> list[dict[str, Any]]:
        """The scored (not estimated) credits of an adapter in one window."""
        rows = self.ledger.read(
            "SELECT a.shares FROM attributions a JOIN receipts r USING (request_id) "
            "WHERE a.adapter_id = ? AND r.epoch = ? AND a.method != ?",
            (adapter_id, epoch, ESTIMATED),
        )
        return [json.loads(shares) for (shares,) in rows]


def record_attributions(
    ledger: ReceiptLedger,
    manifest: Any,
    rows: Sequence[tuple[Hash32, Mapping[str, Any]]],
    method: str,
) -> None:
    """Write one adapter's attributions of receipts into the ledger (one transaction).

    A (receipt, adapter) credited already keeps its first attribution.

    Args:
        ledger: The ledger holding the receipts.
        manifest: The adapter's :class:`~openledger.train.AdapterManifest` (its id,
            snapshot root, datanet and snapshot are recorded with each row).
        rows: ``(request id, shares)``, shares as
            :func:`~openledger.gateway.attribution_policy.averaged` gives them
            (``{"weights": {address: units}, "penalties": {address: units}}``).
        method: How the shares were found (the attribution method's name).
    """
    now = int(time.time())
    values = [
        (
            request_id,
            manifest.adapter_id,
            manifest.snapshot_root,
            manifest.datanet_id,
            manifest.snapshot_id,
            method,
            json.dumps(dict(shares), sort_keys=True),
            now,
        )
        for request_id, shares in rows
    ]
    with ledger.transaction() as conn:
        conn.executemany(
            "INSERT OR IGNORE INTO attributions VALUES (?, ?, ?, ?, ?, ?, ?, ?)", values
        )


def _folder_of(index: InfluenceIndex) -> str:
    """Where an in-memory influence index was saved (its ``output_dir``).

    Raises:
        AttributionInputError: It was built in memory only.
    """
    folder = index.folder
    if folder is None:
        raise AttributionInputError(
            "give an influence index built with output_dir=..., or its folder"
        )
    return str(folder)
