"""``InfluenceIndex``: training gradients of an adapter's snapshot, cached, queried per answer.

::

    adapter + snapshot ── examples (as training tokenised them) ── gradients (per example,
    optionally projected per LoRA layer) ── index folder: index.json + gradients-<c>.npy
                                                                │
    (prompt, completion) ── query gradient ── scorer (method) ──┴── AttributionReport

A record costs ``4 * width`` bytes on disk (``width``: :attr:`InfluenceIndex.width`, the sum
of projected LoRA layer sizes, see :mod:`.gradients`) per checkpoint, half that with 16-bit
rows (``storage_dtype``, see :mod:`.storage`). Without ``output_dir`` the gradients stay
in memory.

Format ``openledger.influence_index/3`` added ``storage_dtype`` and ``compute_dtype`` to
the manifest; an index of format ``/2`` (float32 rows, float32 passes) still loads.

NOTE: ``index.json`` names each record by its hash, contributor and gradient row, never by
its text: an index of a private datanet may be copied or kept after access ends without
carrying the records. A report's record texts are read back through the snapshot each
time, with the grant the index was given, so a revoked or expired grant stops them.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from openledger.attribution.batched import DEFAULT_BATCH_TOKENS
from openledger.attribution.examples import (
    IndexedExample,
    query_example,
    record_text,
    training_examples,
)
from openledger.attribution.gradients import GradientLayout, Projector, lora_pairs
from openledger.attribution.index_checks import (
    check_batch_tokens,
    check_dtypes,
    check_index_snapshot,
    check_settings,
    check_snapshot,
    read_manifest,
)
from openledger.attribution.influence import Scorer, make_scorer
from openledger.attribution.loading import (
    checkpoint_weights,
    gradient_rows,
    load_adapter,
    open_adapter,
    query_gradients,
)
from openledger.attribution.report import AttributionReport, RecordScore
from openledger.attribution.sharded import Executor, build_shards
from openledger.attribution.storage import load_rows
from openledger.data import Snapshot
from openledger.exceptions import AttributionInputError, SnapshotMismatchError
from openledger.types import Address, Hash32

if TYPE_CHECKING:
    import torch

    from openledger.data import AccessGrant
    from openledger.train import Adapter

__all__ = [
    "INDEX_FILE",
    "INDEX_FORMAT",
    "QUERY_CACHE",
    "READABLE_FORMATS",
    "IndexManifest",
    "IndexedRecord",
    "InfluenceIndex",
]

INDEX_FILE = "index.json"
INDEX_FORMAT = "openledger.influence_index/3"
READABLE_FORMATS = (INDEX_FORMAT, "openledger.influence_index/2")
"""Index formats :meth:`InfluenceIndex.load` reads (``/2``: float32 rows, no dtype fields)."""
_PREVIEW_CHARS = 500
QUERY_CACHE = 256
"""Answers whose query gradients an index keeps (least recently used go first)."""


class IndexedRecord(BaseModel):
    """One record of the index: its hash, its contributor and its row in the gradients."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    record_hash: Hash32
    contributor: Address | None
    row: int


class IndexManifest(BaseModel):
    """What an index holds (``index.json``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: str = INDEX_FORMAT
    method: str
    adapter_id: Hash32
    snapshot_root: Hash32
    datanet_id: Hash32 | None
    projection_dim: int | None
    projection_seed: int
    damping_scale: float
    layer_names: tuple[str, ...]
    offsets: tuple[int, ...]
    learning_rates: tuple[float, ...]
    checkpoints: tuple[str, ...]
    num_skipped: int
    records: tuple[IndexedRecord, ...]
    storage_dtype: str = "float32"
    compute_dtype: str = "float32"


class InfluenceIndex:
    """Training gradients of one adapter over its snapshot, ready to attribute answers.

    Build with :meth:`build`, reopen with :meth:`load`, query with :meth:`attribute`.
    """

    def __init__(
        self,
        manifest: IndexManifest,
        grads: list[torch.Tensor],
        adapter: Adapter,
        snapshot: Snapshot | None = None,
        grant: AccessGrant | None = None,
    ) -> None:
        self.manifest = manifest
        self.grads = grads
        self.adapter = adapter
        self.snapshot = snapshot
        self._grant = grant
        self._model: Any = None
        self._tokenizer: Any = None
        self._scorer: Scorer | None = None
        self._queries: OrderedDict[tuple[str, str], list[torch.Tensor]] = OrderedDict()
        self.folder: Path | None = None
        """Where the index is saved (``output_dir`` of :meth:`build`, or :meth:`load`'s)."""

    @property
    def method(self) -> str:
        """The influence method."""
        return self.manifest.method

    @property
    def layout(self) -> GradientLayout:
        """Where each LoRA layer sits in a gradient row."""
        return GradientLayout(self.manifest.layer_names, self.manifest.offsets)

    @property
    def width(self) -> int:
        """Values stored per record and checkpoint (bytes per record = 4 x this x checkpoints
        for float32 rows, 2 x for 16-bit)."""
        return self.layout.width

    def __len__(self) -> int:
        return len(self.manifest.records)

    @classmethod
    def build(
        cls,
        adapter: Adapter | str | os.PathLike[str],
        snapshot: Snapshot,
        method: str = "datainf",
        *,
        output_dir: str | os.PathLike[str] | None = None,
        projection_dim: int | None = None,
        projection_seed: int = 0,
        damping_scale: float = 0.1,
        checkpoints: Sequence[str | os.PathLike[str]] = (),
        learning_rates: Sequence[float] | None = None,
        grant: AccessGrant | None = None,
        progress: bool | None = None,
        device: str | None = None,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        executor: Executor | None = None,
        shards: int = 1,
        compute_dtype: str = "float32",
        storage_dtype: str = "float32",
    ) -> InfluenceIndex:
        """Compute and cache the per-example LoRA gradients of the snapshot's records.

        Args:
            adapter: The adapter (or its folder); its manifest must name ``snapshot``.
            snapshot: The snapshot the adapter was trained on.
            method: ``exact``, ``datainf`` (default), ``tracin`` or ``gradcos``.
            output_dir: Folder for ``index.json`` and the gradient files (default: memory).
            projection_dim: Random projection size per LoRA factor side (default: none).
            projection_seed: Seed of the projections.
            damping_scale: Damping multiplier for ``exact`` and ``datainf``.
            checkpoints: For ``tracin``: adapter checkpoint folders (each with
                ``adapter_model.safetensors``); default the final adapter only.
            learning_rates: For ``tracin``: one per checkpoint (default: the recipe's).
            grant: Access grant for a private datanet.
            progress: Show a progress bar (default: when standard error is a terminal).
            device: Torch device (default CPU).
            batch_tokens: Padded tokens per forward and backward pass: records of similar
                length share a pass (per-example gradients of a whole batch, see
                :mod:`openledger.attribution.batched`); more is faster and uses more memory.
            executor: Build the gradients in ``shards`` tasks on this executor (a
                ``concurrent.futures`` pool, :class:`~openledger.attribution.RayExecutor`):
                the files equal a single-process build's byte for byte, and a build
                interrupted part way resumes (see :mod:`openledger.attribution.sharded`).
                Needs ``output_dir``.
            shards: How many tasks (with ``executor``).
            compute_dtype: Precision of the forward and backward passes: ``float32`` (the
                reference), ``bfloat16`` (under ``torch.autocast``; faster where the device
                has bfloat16 matrix units) or ``float16`` (GPUs). Queries use the same.
                Per-example sums are float32 in every case (:mod:`.batched`).
            storage_dtype: Dtype of the stored rows: ``float32``, ``bfloat16`` or
                ``float16`` (half the bytes; scoring still accumulates in float32, see
                :mod:`.storage`).

        Raises:
            SnapshotMismatchError: The adapter's manifest names another snapshot.
            AttributionInputError: Unknown method, bad settings, or nothing to index.
        """
        found = open_adapter(adapter)
        check_snapshot(found, snapshot)
        check_settings(method, projection_dim, damping_scale, checkpoints, learning_rates)
        check_batch_tokens(batch_tokens)
        check_dtypes(compute_dtype, storage_dtype)
        model, tokenizer = load_adapter(found, device)
        stored = list(snapshot.records(grant=grant))
        examples, skipped = training_examples(stored, tokenizer, found.recipe)
        if not examples:
            raise AttributionInputError("no record of the snapshot is trainable; nothing to index")
        projector = Projector(projection_dim, projection_seed)
        layout = GradientLayout.of(lora_pairs(model), projector)
        rates = tuple(learning_rates or [found.recipe.learning_rate] * max(1, len(checkpoints)))
        settings = _Settings(
            method,
            projector,
            damping_scale,
            rates,
            tuple(map(str, checkpoints)),
            compute_dtype,
            storage_dtype,
        )
        manifest = _manifest(found, snapshot, settings, layout, skipped, examples)
        folder = None if output_dir is None else Path(output_dir)
        if executor is None:
            grads = _gradients(
                model, examples, folder, layout.width, progress, batch_tokens, settings
            )
        elif folder is None:
            raise AttributionInputError("a sharded build writes its shards to output_dir: give one")
        else:
            grads = build_shards(
                str(found.path),
                examples,
                checkpoints,
                folder,
                projector=projector,
                width=layout.width,
                batch_tokens=batch_tokens,
                shards=shards,
                executor=executor,
                device=str(device or "cpu"),
                compute_dtype=compute_dtype,
                storage_dtype=storage_dtype,
            )
        if folder is not None:
            (folder / INDEX_FILE).write_text(manifest.model_dump_json(indent=2) + "\n")
        index = cls(manifest, grads, found, snapshot, grant)
        index._model, index._tokenizer = model, tokenizer
        index.folder = folder
        return index

    @classmethod
    def load(
        cls,
        folder: str | os.PathLike[str],
        adapter: Adapter | str | os.PathLike[str],
        *,
        snapshot: Snapshot | None = None,
        grant: AccessGrant | None = None,
    ) -> InfluenceIndex:
        """Reopen an index folder for ``adapter`` (gradients are memory-mapped).

        Args:
            folder: The index folder.
            adapter: The adapter it was built for (or its folder).
            snapshot: The snapshot it was built on, to show record texts in reports;
                without it reports carry scores, hashes and contributors only.
            grant: Access grant, when the snapshot's datanet is private.

        Raises:
            SnapshotMismatchError: The index was built for another adapter or snapshot.
            AttributionInputError: The folder is not an index (or of a format older than
                ``/2``), or its gradient files do not match its manifest.
            AccessDeniedError: The snapshot's datanet is private and ``grant`` does not
                let its holder read it now.
        """
        root = Path(folder)
        manifest = read_manifest(root, INDEX_FILE, READABLE_FORMATS)
        if snapshot is not None:
            check_index_snapshot(manifest, snapshot)
            snapshot.records(grant=grant)  # refuses now, not at the first report
        found = open_adapter(adapter)
        if manifest.adapter_id != found.id:
            raise SnapshotMismatchError(
                f"the index in {root} was built for adapter {manifest.adapter_id}, "
                f"not {found.id}; build a new index for this adapter"
            )
        grads = [
            load_rows(root / f"gradients-{c}.npy", manifest.storage_dtype)
            for c in range(len(manifest.learning_rates))
        ]
        index = cls(manifest, grads, found, snapshot, grant)
        index.folder = root
        return index

    def with_method(self, method: str, *, damping_scale: float | None = None) -> InfluenceIndex:
        """Return an index over the same gradients scored by another method.

        Raises:
            AttributionInputError: Unknown method (or ``tracin`` settings on one checkpoint).
        """
        scale = self.manifest.damping_scale if damping_scale is None else damping_scale
        check_settings(method, 1, scale, (), None)
        changed = self.manifest.model_copy(update={"method": method, "damping_scale": scale})
        index = InfluenceIndex(changed, self.grads, self.adapter, self.snapshot, self._grant)
        index._model, index._tokenizer = self._model, self._tokenizer
        return index

    def _ensure_model(self) -> None:
        if self._model is None:
            self._model, self._tokenizer = load_adapter(self.adapter, None)

    def scorer(self) -> Scorer:
        """The method's scorer over the training gradients (prepared once)."""
        if self._scorer is None:
            self._scorer = make_scorer(
                self.method,
                self.grads,
                self.layout,
                learning_rates=self.manifest.learning_rates,
                damping_scale=self.manifest.damping_scale,
            )
        return self._scorer

    def query_gradients(self, prompt: str, completion: str) -> list[torch.Tensor]:
        """Return the query's (projected) gradient under each checkpoint."""
        return [rows[0] for rows in self._query_rows([(prompt, completion)])]

    def _query_rows(self, answers: Sequence[tuple[str, str]]) -> list[torch.Tensor]:
        """The answers' gradient rows ``[Q, D]`` per checkpoint: cached ones (the last
        :data:`QUERY_CACHE` answers) reused, the rest computed in batches."""
        import torch

        missing = list(dict.fromkeys(a for a in answers if a not in self._queries))
        if missing:
            self._ensure_model()
            recipe = self.adapter.recipe
            examples = [query_example(p, c, self._tokenizer, recipe) for p, c in missing]
            projector = Projector(self.manifest.projection_dim, self.manifest.projection_seed)
            found = query_gradients(
                self._model,
                projector,
                examples,
                self.manifest.checkpoints,
                compute_dtype=self.manifest.compute_dtype,
            )
            for position, answer in enumerate(missing):
                self._queries[answer] = [rows[position] for rows in found]
        for answer in answers:
            self._queries.move_to_end(answer)
        rows = [torch.stack([self._queries[a][c] for a in answers]) for c in range(len(self.grads))]
        while len(self._queries) > QUERY_CACHE:
            self._queries.popitem(last=False)
        return rows

    def texts(self) -> dict[Hash32, str]:
        """Read the indexed records' texts (a preview each) through the snapshot.

        Every call checks the grant again, so a revoked or expired grant takes effect.

        Returns:
            Record hash -> text; empty when the index has no snapshot attached.

        Raises:
            AccessDeniedError: The datanet is private and the grant no longer works.
        """
        if self.snapshot is None:
            return {}
        return {
            r.record_hash: record_text(r.record)[:_PREVIEW_CHARS]
            for r in self.snapshot.records(grant=self._grant)
        }

    def attribute(self, prompt: str, completion: str) -> AttributionReport:
        """Score every indexed record for the answer ``completion`` to ``prompt``.

        Record texts come from :meth:`texts` (empty strings when no snapshot is attached).

        Raises:
            AttributionInputError: An empty prompt or completion.
            AccessDeniedError: The datanet is private and the grant no longer works.
        """
        return self.attribute_many([(prompt, completion)])[0]

    def attribute_many(self, answers: Sequence[tuple[str, str]]) -> list[AttributionReport]:
        """Score every indexed record for many ``(prompt, completion)`` answers at once:
        their gradients in batches (one forward and backward pass per batch) and one
        matrix product against the index; each report as :meth:`attribute` gives it.

        Raises:
            AttributionInputError: An empty prompt or completion.
            AccessDeniedError: The datanet is private and the grant no longer works.
        """
        answers = [(prompt, completion) for prompt, completion in answers]
        if not answers:
            return []
        texts = self.texts()
        scores = self.scorer().scores(self._query_rows(answers))
        m = self.manifest
        reports = []
        for (prompt, completion), row in zip(answers, scores.tolist(), strict=True):
            records = tuple(
                RecordScore(r.record_hash, r.contributor, float(s), texts.get(r.record_hash, ""))
                for r, s in zip(m.records, row, strict=True)
            )
            reports.append(
                AttributionReport(
                    m.method,
                    m.adapter_id,
                    m.snapshot_root,
                    m.datanet_id,
                    prompt,
                    completion,
                    records,
                )
            )
        return reports


@dataclass(frozen=True, slots=True)
class _Settings:
    method: str
    projector: Projector
    damping_scale: float
    learning_rates: tuple[float, ...]
    checkpoints: tuple[str, ...]
    compute_dtype: str
    storage_dtype: str


def _manifest(
    adapter: Adapter,
    snapshot: Snapshot,
    settings: _Settings,
    layout: GradientLayout,
    skipped: int,
    examples: list[IndexedExample],
) -> IndexManifest:
    records = tuple(
        IndexedRecord(record_hash=e.stored.record_hash, contributor=e.stored.contributor, row=n)
        for n, e in enumerate(examples)
    )
    return IndexManifest(
        method=settings.method,
        adapter_id=adapter.id,
        snapshot_root=snapshot.root,
        datanet_id=snapshot.datanet_id,
        projection_dim=settings.projector.dim,
        projection_seed=settings.projector.seed,
        damping_scale=settings.damping_scale,
        layer_names=layout.names,
        offsets=layout.offsets,
        learning_rates=settings.learning_rates,
        checkpoints=settings.checkpoints,
        num_skipped=skipped,
        records=records,
        storage_dtype=settings.storage_dtype,
        compute_dtype=settings.compute_dtype,
    )


def _gradients(
    model: Any,
    examples: list[IndexedExample],
    folder: Path | None,
    width: int,
    progress: bool | None,
    batch_tokens: int,
    settings: _Settings,
) -> list[torch.Tensor]:
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    grads = []
    for number, weights in enumerate(checkpoint_weights(model, settings.checkpoints)):
        target = None if folder is None else folder / f"gradients-{number}.npy"
        with weights:
            rows = gradient_rows(
                model,
                settings.projector,
                examples,
                width,
                target,
                progress,
                batch_tokens,
                compute_dtype=settings.compute_dtype,
                storage_dtype=settings.storage_dtype,
            )
            grads.append(rows)
    return grads
