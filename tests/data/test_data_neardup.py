"""MinHash signatures and the vectorised LSH index against slow, obvious references."""

from __future__ import annotations

import re
import zlib

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from openledger.data.neardup import MinHasher, NearDuplicateIndex, word_hashes

HASHER = MinHasher()


def test_word_hashes_split_like_a_word_regex_and_ignore_case() -> None:
    texts = ["Hello, world! hello", "", "  ", "naïve café_2 x", "a" * 30 + " " + "a" * 30]
    hashes, counts = word_hashes(texts)
    expected = [len(re.findall(r"[A-Za-z0-9_\u0080-\U0010ffff]+", t)) for t in texts]
    assert counts.tolist() == expected
    assert hashes[0] == hashes[2]
    assert hashes[0] != hashes[1]
    assert hashes[-1] == hashes[-2]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(alphabet="abc de", max_size=30), min_size=1, max_size=8))
def test_signature_of_a_batch_equals_signatures_one_by_one(texts: list[str]) -> None:
    batch = HASHER.signatures(texts)
    single = np.vstack([HASHER.signatures([t]) for t in texts])
    assert np.array_equal(batch, single)


def jaccard(a: str, b: str) -> float:
    def grams(t: str) -> set[int]:
        w = t.lower().split()
        return {zlib.crc32(" ".join(w[i : i + 3]).encode()) for i in range(max(1, len(w) - 2))}

    x, y = grams(a), grams(b)
    return len(x & y) / len(x | y)


def test_estimates_follow_true_similarity() -> None:
    base = " ".join(f"w{i}" for i in range(60))
    near = base + " extra tail"
    far = " ".join(f"v{i}" for i in range(60))
    sigs = HASHER.signatures([base, near, far])
    est_near = float(np.mean(sigs[0] == sigs[1]))
    assert abs(est_near - jaccard(base, near)) < 0.2
    assert float(np.mean(sigs[0] == sigs[2])) < 0.2


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=2, max_size=30), st.floats(0.3, 1.0))
def test_index_query_equals_pairwise_reference(variants: list[int], threshold: float) -> None:
    texts = [
        " ".join(f"t{v}w{i}" for i in range(12)) + f" n{n % 2}" for n, v in enumerate(variants)
    ]
    sigs = HASHER.signatures(texts)
    ids = list(range(10, 10 + len(texts)))
    index = NearDuplicateIndex(HASHER, threshold)
    index.add(ids[: len(ids) // 2], sigs[: len(ids) // 2])
    index.add(ids[len(ids) // 2 :], sigs[len(ids) // 2 :])
    keys = HASHER.band_keys(sigs)
    got = index.query(sigs, below=ids)
    for row, rid in enumerate(ids):
        expected = []
        for other_row, other in enumerate(ids):
            sim = float(np.mean(sigs[row] == sigs[other_row]))
            shares_band = bool(np.any(keys[row] == keys[other_row]))
            if other < rid and shares_band and sim >= threshold:
                expected.append((other, sim))
        expected.sort(key=lambda p: (-p[1], p[0]))
        assert got[row] == expected
