"""Near-duplicate detection: MinHash signatures over word 3-grams, and an LSH index.

Records are flagged (stored beside the record) rather than refused, for validators to
review. Everything is vectorised over a whole contribution with numpy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from openledger.exceptions import ConfigError

__all__ = ["MinHasher", "NearDuplicateIndex", "word_hashes"]

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
    """Pack up to 8 bytes ``data[first : first + size]`` per word into one uint64.

    ``data`` must end with at least 8 padding bytes so every 8-byte window is in bounds.
    """
    windows = np.lib.stride_tricks.as_strided(data, shape=(len(data) - 7, 8), strides=(1, 1))
    mask = np.arange(8, dtype=np.int64)[None, :] < size[:, None]
    picked = np.ascontiguousarray(windows[first] * mask, dtype=np.uint8)
    return picked.view(np.uint64).ravel()


def word_hashes(texts: Sequence[str]) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.int64]]:
    """Hash every word of every text at once; return the hashes and each text's word count.

    A word is a run of ASCII letters, digits, ``_`` or non-ASCII bytes in the lower-cased
    UTF-8 text. A word's hash mixes its length with its first and last 8 bytes (longer
    words that agree on both ends collide, which is harmless for flagging).
    """
    encoded = [t.lower().encode("utf-8", "replace") for t in texts]
    lengths = np.fromiter((len(e) + 1 for e in encoded), dtype=np.int64, count=len(encoded))
    # NOTE: the 8 trailing zero bytes end the last word and pad the 8-byte windows.
    data = np.frombuffer(b"\x00".join(encoded) + bytes(8), dtype=np.uint8)
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
        # NOTE: laid out (num_perm, shingles) so the per-text minimum runs along contiguous
        # rows; reduceat over axis 0 of the transposed layout is ~10x slower.
        hashed = np.empty((self.num_perm, len(shingles)), dtype=_U32)
        with np.errstate(over="ignore"):
            np.multiply(self._a[:, None], shingles[None, :], out=hashed)
            hashed += self._b[:, None]
        starts = np.searchsorted(owners, np.arange(len(texts)))
        return np.ascontiguousarray(np.minimum.reduceat(hashed, starts, axis=1).T)

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

    def band_keys(self, signatures: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint64]:
        """Return a ``(rows, bands)`` array of LSH band keys (band number mixed in)."""
        rows = signatures.reshape(len(signatures), self.bands, -1).astype(np.uint64)
        keys = np.arange(self.bands, dtype=np.uint64)[None, :] + np.uint64(1)
        with np.errstate(over="ignore"):
            for column in range(rows.shape[2]):
                keys = keys * np.uint64(0x100000001B3) ^ rows[:, :, column]
        return keys


class NearDuplicateIndex:
    """In-memory LSH index over stored signatures, kept in step with the store.

    Band keys live in one sorted array (with the record id of each), signatures in a matrix
    ordered by record id; adding and querying are whole-batch numpy operations.

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
        self._keys = np.empty(0, dtype=np.uint64)
        self._key_ids = np.empty(0, dtype=np.int64)
        self._ids = np.empty(0, dtype=np.int64)
        self._signatures = np.empty((0, hasher.num_perm), dtype=_U32)

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, record_ids: Sequence[int], signatures: npt.NDArray[np.uint32]) -> None:
        """Index a batch of records by id."""
        if not len(record_ids):
            return
        ids = np.asarray(record_ids, dtype=np.int64)
        keys = self.hasher.band_keys(signatures).ravel()
        all_keys = np.concatenate((self._keys, keys))
        all_key_ids = np.concatenate((self._key_ids, np.repeat(ids, self.hasher.bands)))
        order = np.argsort(all_keys, kind="stable")
        self._keys, self._key_ids = all_keys[order], all_key_ids[order]
        self._ids = np.concatenate((self._ids, ids))
        self._signatures = np.concatenate((self._signatures, signatures.astype(_U32)))
        if len(self._ids) > 1 and np.any(np.diff(self._ids) <= 0):
            by_id = np.argsort(self._ids, kind="stable")
            self._ids, self._signatures = self._ids[by_id], self._signatures[by_id]
        self.last_id = max(self.last_id, int(ids.max()))

    def _candidate_pairs(
        self, signatures: npt.NDArray[np.uint32], below: Sequence[int] | None
    ) -> npt.NDArray[np.int64]:
        """Return unique ``(query_row, record_id)`` pairs sharing at least one band key."""
        keys = self.hasher.band_keys(signatures).ravel()
        rows = np.repeat(np.arange(len(signatures), dtype=np.int64), self.hasher.bands)
        low = np.searchsorted(self._keys, keys, side="left")
        counts = np.searchsorted(self._keys, keys, side="right") - low
        total = int(counts.sum())
        starts = np.repeat(low - (np.cumsum(counts) - counts), counts)
        candidates = self._key_ids[np.arange(total, dtype=np.int64) + starts]
        pair_rows = np.repeat(rows, counts)
        if below is not None:
            keep = candidates < np.asarray(below, dtype=np.int64)[pair_rows]
            candidates, pair_rows = candidates[keep], pair_rows[keep]
        return np.unique(np.stack((pair_rows, candidates), axis=1), axis=0)

    def query(
        self, signatures: npt.NDArray[np.uint32], *, below: Sequence[int] | None = None
    ) -> list[list[tuple[int, float]]]:
        """Return, per signature, ``(record_id, estimated_jaccard)`` near-duplicates, best first.

        Args:
            signatures: One row per query.
            below: Per query, only consider indexed ids smaller than this (older records).
        """
        found: list[list[tuple[int, float]]] = [[] for _ in range(len(signatures))]
        pairs = self._candidate_pairs(signatures, below) if len(self._ids) else None
        if pairs is None or not len(pairs):
            return found
        stored = self._signatures[np.searchsorted(self._ids, pairs[:, 1])]
        similarity = np.count_nonzero(stored == signatures[pairs[:, 0]], axis=1)
        similarity = similarity / self.hasher.num_perm
        for (row, rid), value in zip(pairs.tolist(), similarity.tolist(), strict=True):
            if value >= self.threshold:
                found[row].append((rid, value))
        for matches in found:
            matches.sort(key=lambda pair: (-pair[1], pair[0]))
        return found
