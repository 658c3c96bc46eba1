"""Span attribution at datanet scale: index build time and query time (SmolLM2 tokenizer).

    python benchmarks/attribution_spans.py [--tokens 10000000] [--queries 50]

A synthetic corpus of about ``--tokens`` SmolLM2 tokens is built as instruction records
(sentences drawn from a seeded vocabulary; each record also states one fact of its own,
``Fact <i>: code <n>.``). The records go straight to :class:`SpanIndex` through a minimal
stand-in for a snapshot (the datanet's ingest rate is measured by benchmarks/data_ingest.py;
here only the index counts): tokenising, the suffix array, and the whole build are timed.

Baseline in the same run: the suffix array built by the numpy prefix-doubling construction
(the reference the tests hold the C library to) over the first ``--baseline-tokens``
tokens, against pydivsufsort over the same tokens, and the ratio. Queries: 100-token
answers that restate a record's fact inside text drawn from the same vocabulary; the median
and p99 of ``SpanIndex.attribute`` over ``--queries`` answers, and how often the record
holding the fact is the top record. Targets (docs/attribution.md): 10 million tokens index in
<= 60 s on a 2-core CPU, a 100-token answer in <= 20 ms.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from _machine import describe_machine  # benchmarks/ is the script folder

from openledger.attribution.spans import SpanIndex
from openledger.attribution.suffix_array import suffix_array, suffix_array_numpy
from openledger.data import InstructionRecord

WORDS = [
    "the",
    "harbour",
    "ferry",
    "leaves",
    "from",
    "pier",
    "north",
    "south",
    "market",
    "garden",
    "bus",
    "tram",
    "ticket",
    "day",
    "pass",
    "price",
    "open",
    "closed",
    "daily",
    "weekly",
    "station",
    "bridge",
    "river",
    "museum",
    "library",
    "compost",
    "seeds",
    "water",
    "mint",
    "tomato",
    "soil",
    "shade",
    "sun",
    "morning",
    "evening",
    "route",
    "line",
    "stop",
    "card",
    "fare",
    "child",
    "adult",
]


@dataclass(frozen=True)
class Stored:
    """What SpanIndex reads of a stored record."""

    record: InstructionRecord
    record_hash: str
    contributor: str


class Corpus:
    """A stand-in snapshot over generated records (what SpanIndex.build reads of one)."""

    def __init__(self, records: list[Stored]) -> None:
        self._records = records
        self.root = "0x" + "ab" * 32
        self.datanet_id = "0x" + "cd" * 32

    def records(self, *, grant: Any = None) -> list[Stored]:
        return self._records

    def get(self, record_hash: str, *, grant: Any = None) -> Stored:
        return self._records[int(record_hash, 16)]


def sentence(rng: np.random.Generator, words: int) -> str:
    return " ".join(rng.choice(WORDS, size=words)) + "."


def make_records(count: int, seed: int = 0) -> list[Stored]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        fact = f"Fact {i}: code {i * 7919 % 100003}."
        record = InstructionRecord(
            instruction=sentence(rng, 12), response=f"{sentence(rng, 40)} {fact}"
        )
        out.append(Stored(record, f"0x{i:064x}", f"0x{i % 97:040x}"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=10_000_000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--baseline-tokens", type=int, default=1_000_000)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from openledger.models import resolve_model

    print(describe_machine())
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct").path)
    per_record = len(tokenizer(make_records(1)[0].record.response)["input_ids"]) + 30
    records = make_records(max(1, args.tokens // per_record))
    start = time.perf_counter()
    index = SpanIndex.build(Corpus(records), tokenizer)  # type: ignore[arg-type]
    build_s = time.perf_counter() - start
    tokens = np.asarray(index._corpus[: -index.settings.max_tokens])
    print(
        f"records {len(records):,}  tokens {len(tokens):,}  build {build_s:.1f} s (target <= 60 s)"
    )

    sample = np.ascontiguousarray(tokens[: args.baseline_tokens])
    start = time.perf_counter()
    suffix_array(sample)
    library_s = time.perf_counter() - start
    start = time.perf_counter()
    suffix_array_numpy(sample)
    numpy_s = time.perf_counter() - start
    print(
        f"suffix array of {len(sample):,} tokens: pydivsufsort {library_s:.2f} s, numpy "
        f"prefix doubling {numpy_s:.2f} s ({numpy_s / library_s:.1f}x)"
    )

    rng = np.random.default_rng(1)
    times, hits = [], 0
    for _ in range(args.queries):
        target = int(rng.integers(len(records)))
        fact = records[target].record.response.rsplit(" Fact", 1)[1]
        answer = f"{sentence(rng, 30)} Fact{fact} {sentence(rng, 30)}"
        start = time.perf_counter()
        report = index.attribute("Which code?", answer)
        times.append(time.perf_counter() - start)
        hits += report.top(1)[0].record_hash == records[target].record_hash
    times.sort()
    p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
    answer_tokens = len(tokenizer(answer)["input_ids"])
    print(
        f"query (~{answer_tokens} tokens): median {1000 * statistics.median(times):.1f} ms, "
        f"p99 {1000 * p99:.1f} ms (target <= 20 ms); fact's record on top {hits}/{args.queries}"
    )


if __name__ == "__main__":
    main()
