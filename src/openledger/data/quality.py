"""Quality rules and near-duplicate detection for datanet records.

A rule is any object with a ``name`` and a ``check(record, text)`` method that returns
``None`` when the record passes or a reason string when it does not; ``text`` is the
record's searchable text (all string fields joined). Rules run on every contribution, and a
failing record stops the whole contribution with :class:`~openledger.exceptions.QualityError`.

Near-duplicates are found with MinHash over word 3-gram shingles and LSH banding; they are
flagged (stored beside the record) rather than refused, for validators to review.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from openledger.data.schemas import Record
from openledger.exceptions import ConfigError

__all__ = [
    "SECRET_PATTERNS",
    "DenyPatternRule",
    "LengthRule",
    "MinHasher",
    "NearDuplicateIndex",
    "QualityRule",
    "RequiredFieldsRule",
    "record_text",
    "strings_of",
    "word_hashes",
]

SECRET_PATTERNS: dict[str, str] = {
    "private key block": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    "AWS access key id": r"\bAKIA[0-9A-Z]{16}\b",
    "GitHub token": r"\bgh[pousr]_[A-Za-z0-9]{36,}\b",
    "hex private key": r"\b0x[0-9a-fA-F]{64}\b",
    "email address": r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b",
    "US social security number": r"\b\d{3}-\d{2}-\d{4}\b",
}
"""Default deny-list for :class:`DenyPatternRule`: secrets and common PII, by name."""


@runtime_checkable
class QualityRule(Protocol):
    """What a datanet needs from a quality rule."""

    name: str

    def check(self, record: Record, text: str) -> str | None:
        """Return ``None`` if ``record`` passes, else the reason it fails."""


def strings_of(value: object) -> Iterable[str]:
    """Yield every string inside nested dicts, lists and tuples, depth first."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings_of(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from strings_of(item)


def record_text(record: Record) -> str:
    """Return every string field of ``record`` joined by newlines (for rules and MinHash)."""
    return "\n".join(strings_of(record.model_dump(exclude_none=True)))


@dataclass(frozen=True)
class LengthRule:
    """Refuse records whose text (or one field) is shorter or longer than given bounds.

    Args:
        min_chars: Smallest allowed length in characters.
        max_chars: Largest allowed length, or ``None`` for no bound.
        field: Check this string field instead of the whole text.
    """

    min_chars: int = 1
    max_chars: int | None = None
    field: str | None = None
    name: str = "length"

    def check(self, record: Record, text: str) -> str | None:
        """Return why the length is out of bounds, or ``None``."""
        target = text if self.field is None else str(getattr(record, self.field, "") or "")
        where = "text" if self.field is None else f"field {self.field!r}"
        if len(target) < self.min_chars:
            return f"{where} has {len(target)} characters, fewer than min_chars={self.min_chars}"
        if self.max_chars is not None and len(target) > self.max_chars:
            return f"{where} has {len(target)} characters, more than max_chars={self.max_chars}"
        return None


@dataclass(frozen=True)
class RequiredFieldsRule:
    """Refuse records where any of ``fields`` is missing, ``None`` or blank."""

    fields: tuple[str, ...]
    name: str = "required-fields"

    def check(self, record: Record, text: str) -> str | None:
        """Return which required field is empty, or ``None``."""
        for name in self.fields:
            value = getattr(record, name, None)
            if value is None or (isinstance(value, str) and not value.strip()):
                return f"required field {name!r} is missing or blank"
        return None


@dataclass(frozen=True)
class DenyPatternRule:
    """Refuse records whose text matches a deny-listed regular expression.

    Args:
        patterns: ``{description: regex}``; defaults to :data:`SECRET_PATTERNS`.
    """

    patterns: dict[str, str] = field(default_factory=lambda: dict(SECRET_PATTERNS))
    name: str = "deny-patterns"
    _compiled: tuple[tuple[str, re.Pattern[str]], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        try:
            compiled = tuple((k, re.compile(v)) for k, v in self.patterns.items())
        except re.error as exc:
            raise ConfigError(f"DenyPatternRule pattern is not a valid regex: {exc}") from None
        object.__setattr__(self, "_compiled", compiled)

    def check(self, record: Record, text: str) -> str | None:
        """Return which deny-listed pattern matched, or ``None``."""
        for description, pattern in self._compiled:
            if pattern.search(text):
                return f"text matches the deny-listed pattern {description!r}; remove it and retry"
        return None


_U32 = np.uint32


def _fmix64(h: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """MurmurHash3's 64-bit finaliser: spreads every input bit over the output."""
    with np.errstate(over="ignore"):
        h = h ^ (h >> np.uint64(33))
        h = h * np.uint64(0xFF51AFD7ED558CCD)
        h = h ^ (h >> np.uint64(33))
        h = h * np.uint64(0xC4CEB9FE1A85EC53)
        return h ^ (h >> np.uint64(33))


def _gather8(
    data: npt.NDArray[np.uint8], first: npt.NDArray[np.int64], size: npt.NDArray[np.int64]
) -> npt.NDArray[np.uint64]:
    """Pack up to 8 bytes ``data[first : first + size]`` per word into one uint64."""
    offsets = np.arange(8, dtype=np.int64)
    index = np.minimum(first[:, None] + offsets[None, :], len(data) - 1)
    picked = np.where(offsets[None, :] < size[:, None], data[index], 0).astype(np.uint8)
    return picked.view(np.uint64).ravel()


def word_hashes(texts: Sequence[str]) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.int64]]:
    """Hash every word of every text at once; return the hashes and each text's word count.

    A word is a run of ASCII letters, digits, ``_`` or non-ASCII bytes in the lower-cased
    UTF-8 text. A word's hash mixes its length with its first and last 8 bytes (longer
    words that agree on both ends collide, which is harmless for flagging).
    """
    encoded = [t.lower().encode("utf-8", "replace") for t in texts]
    lengths = np.fromiter((len(e) + 1 for e in encoded), dtype=np.int64, count=len(encoded))
    data = np.frombuffer(b"\x00".join(encoded) + b"\x00", dtype=np.uint8)
    edges = np.diff(_WORD_BYTE[data].view(np.int8), prepend=np.int8(0))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    size = ends - starts
    head = _gather8(data, starts, np.minimum(size, 8))
    tail_size = np.clip(size - 8, 0, 8)
    tail = _gather8(data, ends - tail_size, tail_size)
    with np.errstate(over="ignore"):
        mixed = _fmix64(head ^ _fmix64(tail + size.astype(np.uint64)))
    owners = np.searchsorted(np.cumsum(lengths), starts, side="right")
    counts = np.bincount(owners, minlength=len(texts)).astype(np.int64)
    return (mixed >> np.uint64(32)).astype(_U32), counts


def _word_byte_table() -> npt.NDArray[np.bool_]:
    table = np.zeros(256, dtype=np.bool_)
    for ch in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_":
        table[ch] = True
    table[0x80:] = True
    return table


_WORD_BYTE = _word_byte_table()


class MinHasher:
    """MinHash signatures of word 3-gram shingles, vectorised over a whole batch.

    Args:
        num_perm: Signature length; must be divisible by ``bands``.
        bands: LSH bands; two records become candidates if any band matches.
        seed: Seed of the hash coefficients (fixed, so stored signatures stay comparable).
    """

    def __init__(self, num_perm: int = 32, bands: int = 8, seed: int = 1) -> None:
        if num_perm % bands:
            raise ConfigError(f"num_perm={num_perm} must be divisible by bands={bands}")
        rng = np.random.default_rng(seed)
        self.num_perm, self.bands = num_perm, bands
        # NOTE: x -> a*x + b (mod 2^32) with odd a is a permutation of 32-bit values; it is
        # a weaker family than mod-prime hashing but plenty for flagging, and twice as fast.
        self._a = (rng.integers(0, 1 << 31, num_perm, dtype=np.uint64) * 2 + 1).astype(_U32)
        self._b = rng.integers(0, 1 << 32, num_perm, dtype=np.uint64).astype(_U32)

    def signatures(self, texts: Sequence[str]) -> npt.NDArray[np.uint32]:
        """Return a ``(len(texts), num_perm)`` array of MinHash signatures.

        A text without words gets the signature of one empty shingle.
        """
        flat, counts = word_hashes(texts)
        empty = np.flatnonzero(counts == 0)
        if len(empty):
            # NOTE: give wordless texts one zero "word" so every text owns >= 1 shingle.
            offsets = np.cumsum(counts) - counts
            flat = np.insert(flat, offsets[empty], _U32(0))
            counts = np.maximum(counts, 1)
        shingles, owners = self._shingles(flat, counts)
        hashed = np.empty((len(shingles), self.num_perm), dtype=_U32)
        with np.errstate(over="ignore"):
            np.multiply(shingles[:, None], self._a[None, :], out=hashed)
            hashed += self._b[None, :]
        starts = np.searchsorted(owners, np.arange(len(texts)))
        return np.minimum.reduceat(hashed, starts, axis=0)

    @staticmethod
    def _shingles(
        flat: npt.NDArray[np.uint32], counts: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.int64]]:
        """Combine word hashes into 3-gram hashes; texts under 3 words keep one shingle."""
        owner = np.repeat(np.arange(len(counts)), counts)
        ends = np.cumsum(counts)
        position = np.arange(len(flat)) - np.repeat(ends - counts, counts)
        width = np.repeat(np.minimum(counts, 3), counts)
        keep = position <= np.repeat(counts, counts) - width
        nxt1 = np.where(width > 1, np.roll(flat, -1), 0).astype(_U32)
        nxt2 = np.where(width > 2, np.roll(flat, -2), 0).astype(_U32)
        with np.errstate(over="ignore"):
            combined = (flat * _U32(0x9E3779B1) + nxt1) * _U32(0x85EBCA6B) + nxt2
        return combined[keep], owner[keep]

    def band_keys(self, signatures: npt.NDArray[np.uint32]) -> list[list[int]]:
        """Return, per signature row, one integer key per LSH band (band number mixed in)."""
        rows = signatures.reshape(len(signatures), self.bands, -1).astype(np.uint64)
        keys = np.arange(self.bands, dtype=np.uint64)[None, :] + np.uint64(1)
        with np.errstate(over="ignore"):
            for column in range(rows.shape[2]):
                keys = keys * np.uint64(0x100000001B3) ^ rows[:, :, column]
        return keys.tolist()  # type: ignore[no-any-return]


class NearDuplicateIndex:
    """In-memory LSH index over stored signatures, kept in step with the store.

    Args:
        hasher: The MinHasher whose signatures are indexed.
        threshold: Estimated Jaccard similarity from which a pair is a near-duplicate.

    Attributes:
        last_id: Highest record id indexed so far (the store adds newer ones before use).
    """

    def __init__(self, hasher: MinHasher, threshold: float = 0.8) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ConfigError(f"near_duplicate_threshold must be in (0, 1], got {threshold}")
        self.hasher, self.threshold, self.last_id = hasher, threshold, 0
        self._buckets: dict[int, list[int]] = {}
        self._signatures: dict[int, bytes] = {}

    def add(self, record_ids: Sequence[int], signatures: npt.NDArray[np.uint32]) -> None:
        """Index a batch of records by id."""
        buckets = self._buckets
        for rid, keys, raw in zip(
            record_ids, self.hasher.band_keys(signatures), signatures, strict=True
        ):
            self._signatures[rid] = raw.tobytes()
            for key in keys:
                bucket = buckets.get(key)
                if bucket is None:
                    buckets[key] = [rid]
                else:
                    bucket.append(rid)
        if record_ids:
            self.last_id = max(self.last_id, max(record_ids))

    def query(
        self, signatures: npt.NDArray[np.uint32], *, below: Sequence[int] | None = None
    ) -> list[list[tuple[int, float]]]:
        """Return, per signature, ``(record_id, estimated_jaccard)`` near-duplicates, best first.

        Args:
            signatures: One row per query.
            below: Per query, only consider indexed ids smaller than this (older records).
        """
        found: list[list[tuple[int, float]]] = []
        limits = below if below is not None else [None] * len(signatures)
        keys_per_row = self.hasher.band_keys(signatures)
        for keys, signature, limit in zip(keys_per_row, signatures, limits, strict=True):
            candidates = {rid for key in keys for rid in self._buckets.get(key, ())}
            matches = []
            for rid in candidates:
                if limit is not None and rid >= limit:
                    continue
                other = np.frombuffer(self._signatures[rid], dtype=np.uint32)
                similarity = np.count_nonzero(other == signature) / self.hasher.num_perm
                if similarity >= self.threshold:
                    matches.append((rid, similarity))
            found.append(sorted(matches, key=lambda pair: (-pair[1], pair[0])))
        return found
