"""Span attribution: which records hold the longest spans of an answer, for any model.

Influence needs a model's gradients; spans need only its tokenizer. Every record of a
snapshot is tokenised (its fields as :func:`~openledger.attribution.examples.record_text`
joins them) into one token array with a suffix array over it
(:mod:`~openledger.attribution.suffix_array`). An answer is then scored in milliseconds:

1. for every token of the answer, the longest span starting there that some record holds;
   a span is kept when no kept span contains it (maximal) and it is at least
   ``min_tokens`` long;
2. a kept span of ``L`` tokens found in ``df`` of the ``R`` indexed records weighs
   ``L * ln(R / df)``: a phrase every record shares says nothing about which one shaped the
   answer and earns nothing, a phrase one record alone holds earns the most;
3. a record's score is the sum of ``weight / df`` over the spans it holds (a span's weight is
   shared by the records holding it), and the report's contributor shares follow from the
   records' scores as for influence. The report lists only the records that score (a
   datanet of a million records would otherwise put a million zeros in every report).

The index holds the records' tokens, which reveal their text as much as the text itself:
for a private datanet it is built only with a grant, and its files are written 0600 in a
0700 folder; report texts (of the records that score) are read through the snapshot with
that grant on every call, so a revoked grant stops them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from openledger.attribution.examples import record_text
from openledger.attribution.report import AttributionReport, MatchedSpan, RecordScore
from openledger.attribution.suffix_array import SEPARATOR, longest_matches, suffix_array
from openledger.data import AccessGrant, Snapshot
from openledger.exceptions import AttributionInputError
from openledger.types import Address, Hash32

__all__ = ["LISTED_HOLDERS", "SPAN_INDEX_FORMAT", "TEXT_RECORDS", "SpanIndex", "SpanSettings"]

SPAN_INDEX_FORMAT = "openledger.span_index/1"
"""The ``format`` of a span index's ``span_index.json``."""
LISTED_HOLDERS = 100
"""A weighted span names the records holding it when they are at most this many."""
TEXT_RECORDS = 10
"""A report carries the texts of this many best-scoring records."""
_MANIFEST = "span_index.json"
_ARRAYS = ("tokens", "suffixes", "starts")
_NO_ADAPTER = "0x" + "00" * 32
_PREVIEW_CHARS = 500


@dataclass(frozen=True, slots=True)
class SpanSettings:
    """How spans are found and weighed.

    Attributes:
        min_tokens: Shortest span that counts.
        max_tokens: Longest span looked for (longer matches count as this long).
    """

    min_tokens: int = 2
    max_tokens: int = 64

    def __post_init__(self) -> None:
        if not (isinstance(self.min_tokens, int) and 1 <= self.min_tokens <= self.max_tokens):
            raise AttributionInputError(
                f"min_tokens must be an int in 1..max_tokens, got {self.min_tokens!r}"
            )
        if not (isinstance(self.max_tokens, int) and 1 <= self.max_tokens <= 4096):
            raise AttributionInputError(
                f"max_tokens must be an int in 1..4096, got {self.max_tokens!r}"
            )


class SpanIndex:
    """A token-level suffix array over a snapshot's records (see the module docstring).

    Build with :meth:`build`; reload a saved one with :meth:`load`.

    Attributes:
        tokenizer: Turns text into token ids (``tokenizer(text)["input_ids"]``).
        record_hashes: The indexed records, in snapshot order.
        contributors: Each record's contributor.
        snapshot: The snapshot (for record texts), when attached.
        settings: How spans are found and weighed.
    """

    def __init__(
        self,
        *,
        tokenizer: Any,
        tokens: npt.NDArray[np.uint32],
        suffixes: npt.NDArray[np.int64],
        starts: npt.NDArray[np.int64],
        record_hashes: Sequence[Hash32],
        contributors: Sequence[Address],
        snapshot_root: Hash32,
        datanet_id: Hash32 | None,
        snapshot: Snapshot | None = None,
        grant: AccessGrant | None = None,
        settings: SpanSettings | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.settings = settings or SpanSettings()
        cap = self.settings.max_tokens
        self._corpus = np.concatenate([tokens, np.full(cap, SEPARATOR, dtype=np.uint32)])
        self._suffixes, self._starts = suffixes, starts
        self.record_hashes, self.contributors = tuple(record_hashes), tuple(contributors)
        self.snapshot_root, self.datanet_id = snapshot_root, datanet_id
        self.snapshot, self._grant = snapshot, grant

    @classmethod
    def build(
        cls,
        snapshot: Snapshot,
        tokenizer: Any,
        *,
        grant: AccessGrant | None = None,
        output_dir: str | os.PathLike[str] | None = None,
        settings: SpanSettings | None = None,
    ) -> SpanIndex:
        """Tokenise every record of ``snapshot`` and build the suffix array over them.

        Args:
            snapshot: The records to index.
            tokenizer: A Hugging Face tokenizer (or anything called as one).
            grant: Access grant for a private datanet.
            output_dir: Also save the index there (see :meth:`load`).
            settings: How spans are found and weighed.

        Raises:
            AccessDeniedError: The datanet is private and ``grant`` does not open it.
            AttributionInputError: The snapshot holds no record.
        """
        records = list(snapshot.records(grant=grant))
        if not records:
            raise AttributionInputError("the snapshot holds no record to index")
        pieces, starts, offset = [], [], 0
        for stored in records:
            ids = np.asarray(_token_ids(tokenizer, record_text(stored.record)), dtype=np.uint32)
            starts.append(offset)
            pieces.append(np.concatenate([ids, np.array([SEPARATOR], dtype=np.uint32)]))
            offset += len(ids) + 1
        tokens = np.concatenate(pieces)
        index = cls(
            tokenizer=tokenizer,
            tokens=tokens,
            suffixes=suffix_array(tokens),
            starts=np.asarray(starts, dtype=np.int64),
            record_hashes=[r.record_hash for r in records],
            contributors=[r.contributor for r in records],
            snapshot_root=snapshot.root,
            datanet_id=snapshot.datanet_id,
            snapshot=snapshot,
            grant=grant,
            settings=settings,
        )
        if output_dir is not None:
            index.save(output_dir)
        return index

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the arrays (``.npy``, memory-mappable) and ``span_index.json``, owner-only."""
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(target, 0o700)
        cap = self.settings.max_tokens
        arrays = {"tokens": self._corpus[:-cap], "suffixes": self._suffixes, "starts": self._starts}
        for name, values in arrays.items():
            _write_private(target / f"{name}.npy", lambda f, v=values: np.save(f, v))
        manifest = {
            "format": SPAN_INDEX_FORMAT,
            "tokenizer": _tokenizer_name(self.tokenizer),
            "vocab_size": int(getattr(self.tokenizer, "vocab_size", 0) or 0),
            "snapshot_root": self.snapshot_root,
            "datanet_id": self.datanet_id,
            "records": [
                {"record_hash": h, "contributor": c}
                for h, c in zip(self.record_hashes, self.contributors, strict=True)
            ],
            "settings": {"min_tokens": self.settings.min_tokens, "max_tokens": cap},
        }
        text = json.dumps(manifest, indent=2) + "\n"
        _write_private(target / _MANIFEST, lambda f: f.write(text.encode()))
        return target

    @classmethod
    def load(
        cls,
        folder: str | os.PathLike[str],
        tokenizer: Any,
        *,
        snapshot: Snapshot | None = None,
        grant: AccessGrant | None = None,
    ) -> SpanIndex:
        """Open a saved index (arrays memory-mapped).

        Args:
            folder: Where :meth:`save` wrote it.
            tokenizer: The tokenizer it was built with (its name is checked).
            snapshot: Attach the snapshot, for record texts in reports (its root must match).
            grant: Access grant for a private datanet's texts.

        Raises:
            AttributionInputError: Not a span index, another tokenizer or another snapshot.
        """
        source = Path(folder)
        try:
            manifest = json.loads((source / _MANIFEST).read_text())
        except (OSError, ValueError) as error:
            raise AttributionInputError(
                f"{source} holds no readable span index: {error}"
            ) from error
        if manifest.get("format") != SPAN_INDEX_FORMAT:
            raise AttributionInputError(
                f"{source} is format {manifest.get('format')!r}, not {SPAN_INDEX_FORMAT!r}"
            )
        if manifest["tokenizer"] != _tokenizer_name(tokenizer):
            raise AttributionInputError(
                f"the index was built with tokenizer {manifest['tokenizer']!r}, "
                f"not {_tokenizer_name(tokenizer)!r}: build it again for this tokenizer"
            )
        if snapshot is not None and snapshot.root != manifest["snapshot_root"]:
            raise AttributionInputError(
                f"the index is of snapshot {manifest['snapshot_root']}, not {snapshot.root}"
            )
        arrays = {name: np.load(source / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
        records = manifest["records"]
        return cls(
            tokenizer=tokenizer,
            tokens=np.asarray(arrays["tokens"]),
            suffixes=arrays["suffixes"],
            starts=arrays["starts"],
            record_hashes=[r["record_hash"] for r in records],
            contributors=[r["contributor"] for r in records],
            snapshot_root=manifest["snapshot_root"],
            datanet_id=manifest["datanet_id"],
            snapshot=snapshot,
            grant=grant,
            settings=SpanSettings(**manifest["settings"]),
        )

    def __len__(self) -> int:
        return len(self.record_hashes)

    def spans(self, completion: str) -> list[MatchedSpan]:
        """The maximal spans of ``completion`` that indexed records hold, with their weights.

        Raises:
            AttributionInputError: An empty or non-string completion.
        """
        return [span for span, _ in self._matched(completion)]

    def _matched(self, completion: str) -> list[tuple[MatchedSpan, npt.NDArray[np.int64]]]:
        """Each kept span with the rows (record positions) of the records holding it."""
        if not isinstance(completion, str) or not completion.strip():
            raise AttributionInputError(
                f"completion must be a non-empty string, got {completion!r}"
            )
        ids = np.asarray(_token_ids(self.tokenizer, completion), dtype=np.int64)
        found = longest_matches(self._corpus, self._suffixes, ids, self.settings.max_tokens)
        kept, reach = [], 0
        for start in range(len(ids)):
            length = int(found.lengths[start])
            if start + length <= reach or length < self.settings.min_tokens:
                continue  # inside a kept span, or too short to count
            reach = start + length
            rows = np.asarray(self._suffixes[found.lo[start] : found.hi[start]])
            holders = np.unique(np.searchsorted(self._starts, rows, side="right") - 1)
            weight = length * math.log(len(self) / len(holders))
            listed = holders if weight > 0 and len(holders) <= LISTED_HOLDERS else holders[:0]
            span = MatchedSpan(
                start,
                length,
                _decode(self.tokenizer, ids[start : start + length]),
                weight,
                tuple(self.record_hashes[int(i)] for i in listed),
                len(holders),
            )
            kept.append((span, holders))
        return kept

    def attribute(
        self, prompt: str, completion: str, *, adapter_id: Hash32 | None = None
    ) -> AttributionReport:
        """Score the indexed records by the spans of ``completion`` they hold.

        The report lists the records that hold a weighted span (every other record scores
        0), and the texts of the best :data:`TEXT_RECORDS` of them.

        Args:
            prompt: The question (recorded in the report; spans come from the answer).
            completion: The answer.
            adapter_id: The adapter that answered (zeros when the base model did).

        Raises:
            AttributionInputError: An empty prompt or completion.
            AccessDeniedError: The datanet is private and the grant no longer works.
        """
        if not isinstance(prompt, str) or not prompt.strip():
            raise AttributionInputError(f"prompt must be a non-empty string, got {prompt!r}")
        matched = self._matched(completion)
        scores = np.zeros(len(self), dtype=np.float64)
        for span, holders in matched:
            if span.weight > 0:
                scores[holders] += span.weight / len(holders)
        scored = np.flatnonzero(scores)
        best = scored[np.argsort(-scores[scored], kind="stable")[:TEXT_RECORDS]]
        texts = self._texts([self.record_hashes[int(i)] for i in best])
        records = tuple(
            RecordScore(
                self.record_hashes[i],
                self.contributors[i],
                float(scores[i]),
                texts.get(self.record_hashes[i], ""),
            )
            for i in scored.tolist()
        )
        return AttributionReport(
            "spans",
            adapter_id or _NO_ADAPTER,  # type: ignore[arg-type]
            self.snapshot_root,
            self.datanet_id,
            prompt,
            completion,
            records,
            tuple(span for span, _ in matched),
        )

    def _texts(self, hashes: Sequence[Hash32]) -> dict[Hash32, str]:
        """The scored records' texts, read through the snapshot with the grant each call."""
        if self.snapshot is None:
            return {}
        return {
            h: record_text(self.snapshot.get(h, grant=self._grant).record)[:_PREVIEW_CHARS]
            for h in hashes
        }


def _token_ids(tokenizer: Any, text: str) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [int(i) for i in ids]


def _decode(tokenizer: Any, ids: npt.NDArray[np.int64]) -> str:
    decode = getattr(tokenizer, "decode", None)
    return str(decode(ids.tolist())) if decode is not None else " ".join(map(str, ids.tolist()))


def _tokenizer_name(tokenizer: Any) -> str:
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    return f"{name}|{len(tokenizer) if hasattr(tokenizer, '__len__') else 0}"


def _write_private(path: Path, write: Any) -> None:
    """Write a file readable by its owner only, through a temporary name (never half a file)."""
    scratch = path.with_name(path.name + ".partial")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(scratch, path)
