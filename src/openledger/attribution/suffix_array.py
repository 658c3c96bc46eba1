"""Suffix arrays over token ids, and the longest match of every suffix of a query.

The corpus is one ``uint32`` array: each record's tokens followed by :data:`SEPARATOR`, a
value no tokenizer produces, so no match runs from one record into the next. Its suffix
array comes from ``pydivsufsort`` (the ``spans`` extra; about 2 s for 10 million tokens on
two cores) or, without it, from prefix doubling over numpy (the slow, obvious construction
that the tests also hold the library to).

Matching is vectorised over all start positions of the query at once: one binary search of
every suffix of the query finds where it would sit in the suffix array, and the longest
prefix it shares with any corpus suffix is shared with one of its two neighbours there
(sorted order puts the best match next to the insertion point). Two more searches, limited
to that prefix, bound the range of corpus suffixes that start with it: its occurrences.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = ["SEPARATOR", "Matches", "longest_matches", "suffix_array", "suffix_array_numpy"]

SEPARATOR = np.uint32(0xFFFFFFFF)
"""Ends every record in the corpus; never a token id."""

IntArray = npt.NDArray[np.int64]


def suffix_array(tokens: npt.NDArray[np.uint32]) -> IntArray:
    """The suffix array of ``tokens``: start positions of its suffixes in sorted order
    (a shorter suffix before every longer one it prefixes)."""
    try:
        from pydivsufsort import divsufsort
    except ImportError:
        return suffix_array_numpy(tokens)
    if len(tokens) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.asarray(divsufsort(np.ascontiguousarray(tokens)), dtype=np.int64)


def suffix_array_numpy(tokens: npt.NDArray[np.uint32]) -> IntArray:
    """Prefix doubling: rank suffixes by their first ``k`` tokens, then by ``2k`` from pairs
    of ranks, until every rank differs (``O(n log^2 n)``; the reference construction)."""
    count = len(tokens)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    _, rank = np.unique(tokens, return_inverse=True)
    rank = rank.astype(np.int64)
    order = np.argsort(rank, kind="stable")
    step = 1
    while True:
        # NOTE: a suffix that ends within k tokens has second key -1: it sorts first
        second = np.full(count, -1, dtype=np.int64)
        if step < count:
            second[: count - step] = rank[step:]
        order = np.lexsort((second, rank))
        pairs = np.stack([rank[order], second[order]], axis=1)
        new_group = np.any(pairs[1:] != pairs[:-1], axis=1)
        ranks_sorted = np.concatenate([[0], np.cumsum(new_group)])
        rank = np.empty(count, dtype=np.int64)
        rank[order] = ranks_sorted
        if ranks_sorted[-1] == count - 1 or step >= count:
            return order.astype(np.int64)
        step *= 2


class Matches(NamedTuple):
    """The longest match of each suffix of a query.

    Attributes:
        lengths: ``lengths[i]``: tokens of ``query[i:]`` found somewhere in the corpus.
        lo: First suffix-array row whose suffix starts with that match.
        hi: One past the last such row (``hi - lo`` occurrences; 0 when the length is 0).
    """

    lengths: IntArray
    lo: IntArray
    hi: IntArray


def longest_matches(
    corpus: npt.NDArray[np.uint32], sa: IntArray, query: npt.NDArray[np.int64], cap: int
) -> Matches:
    """For every start ``i`` of ``query``, the longest prefix of ``query[i:]`` (at most
    ``cap`` tokens) that occurs in ``corpus``, and the suffix-array rows holding it.

    Args:
        corpus: The records' tokens with separators, padded by at least ``cap`` separators
            at its end (so reads past a suffix never leave the array).
        sa: Its suffix array (of the unpadded part).
        query: Token ids.
        cap: The longest match looked for.
    """
    starts = np.arange(len(query))
    window = np.arange(cap)
    # NOTE: past its end a query suffix reads -1: it sorts before every token, as a shorter
    # string does, and equals no corpus token (tokens and separators are >= 0)
    padded = np.concatenate([query, np.full(cap, -1, dtype=np.int64)])
    patterns = padded[starts[:, None] + window[None, :]]
    full = np.full(len(query), cap, dtype=np.int64)
    insert = _search(corpus, sa, patterns, full, upper=False)
    best = np.maximum(
        _common_prefix(corpus, sa, patterns, np.maximum(insert - 1, 0)) * (insert > 0),
        _common_prefix(corpus, sa, patterns, np.minimum(insert, len(sa) - 1)) * (insert < len(sa)),
    )
    lo = _search(corpus, sa, patterns, best, upper=False)
    hi = _search(corpus, sa, patterns, best, upper=True)
    hi = np.where(best > 0, hi, lo)
    return Matches(best.astype(np.int64), lo, hi)


def _rows(corpus: npt.NDArray[np.uint32], sa: IntArray, rows: IntArray, width: int) -> IntArray:
    positions = sa[rows][:, None] + np.arange(width)[None, :]
    found: IntArray = corpus[positions].astype(np.int64)
    return found


def _compare(
    corpus: npt.NDArray[np.uint32],
    sa: IntArray,
    rows: IntArray,
    patterns: IntArray,
    lengths: IntArray,
) -> IntArray:
    """-1, 0 or 1: each row's suffix against its pattern over the pattern's first
    ``lengths`` tokens."""
    width = patterns.shape[1]
    text = _rows(corpus, sa, rows, width)
    live = np.arange(width)[None, :] < lengths[:, None]
    differ = (text != patterns) & live
    first = np.argmax(differ, axis=1)
    any_diff = differ.any(axis=1)
    picked = np.arange(len(rows))
    sign = np.sign(text[picked, first] - patterns[picked, first])
    return np.where(any_diff, sign, 0).astype(np.int64)


def _search(
    corpus: npt.NDArray[np.uint32],
    sa: IntArray,
    patterns: IntArray,
    lengths: IntArray,
    *,
    upper: bool,
) -> IntArray:
    """Vectorised binary search: the first row whose suffix is >= (``upper``: >) each
    pattern, comparing ``lengths`` tokens."""
    lo = np.zeros(len(patterns), dtype=np.int64)
    hi = np.full(len(patterns), len(sa), dtype=np.int64)
    while True:
        open_ = lo < hi
        if not open_.any():
            return lo
        mid = (lo + hi) // 2
        rows = np.minimum(mid, max(len(sa) - 1, 0))
        order = _compare(corpus, sa, rows, patterns, lengths)
        right = (order <= 0) if upper else (order < 0)
        lo = np.where(open_ & right, mid + 1, lo)
        hi = np.where(open_ & ~right, mid, hi)


def _common_prefix(
    corpus: npt.NDArray[np.uint32], sa: IntArray, patterns: IntArray, rows: IntArray
) -> IntArray:
    if len(sa) == 0:
        return np.zeros(len(patterns), dtype=np.int64)
    text = _rows(corpus, sa, rows, patterns.shape[1])
    same = text == patterns
    lengths: IntArray = np.where(same.all(axis=1), patterns.shape[1], np.argmin(same, axis=1))
    return lengths.astype(np.int64)
