"""Datanet ingest, snapshot and proof benchmark.

Prints records/s for validate + hash + sign + store of N InstructionRecords through
``Datanet.contribute`` (batches of 10k, one signed transaction each), with the near-duplicate
check on (the default) and off, against two baselines measured in the same run: a naive
loop (pydantic validation, ``json.dumps`` + ``eth_utils.keccak``, one INSERT + COMMIT per
record) and a minimal batched pipeline (the same validation and hashing, then one
``executemany`` in one transaction, no signature, no Unicode normalisation, no duplicate
check). Durability is compared in the same run: the store's default ``durability="full"``
(every commit fsync'd) against ``"normal"`` (the previous default), as a ratio. Then the
snapshot time over all N records and the proof generation time.

Then the same contributions into the other stores, in the same run, as ratios to the SQLite
rate: a PostgreSQL datanet (a server started in a temporary folder with fsync on, or
``--postgres URL``), and a datanet service over HTTP (a uvicorn process on 127.0.0.1
hosting both) fed by ``RemoteDatanet``, which signs here and posts. Last, several writer
processes at once (``--writers``), each with its own key, into SQLite, PostgreSQL and the
service in front of PostgreSQL: records/s of all of them together.

    python benchmarks/data_ingest.py            # N = 100000
    python benchmarks/data_ingest.py --n 20000  # quicker
    python benchmarks/data_ingest.py --stores-only --n 20000   # only the store rows
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from eth_utils import keccak

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test helpers below
from tests.data.concurrent_writers import run_writers
from tests.data.datanet_servers import start_datanet_server
from tests.data.postgres_server import start_postgres

from openledger.crypto import Account
from openledger.data import Datanet, InstructionRecord, RemoteDatanet, verify_proof

WORDS = [
    "".join(random.Random(i).choice("abcdefghijklmnopqrstuvwxyz") for _ in range(3 + i % 7))
    for i in range(20_000)
]


def make_rows(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [
        {
            "instruction": " ".join(rng.choices(WORDS, k=12)) + f" #{seed}-{i}",
            "response": " ".join(rng.choices(WORDS, k=40)),
        }
        for i in range(n)
    ]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def ours(
    rows: list[dict[str, str]], folder: Path | str, threshold: float, durability: str = "full"
) -> tuple[float, Datanet]:
    dn = Datanet.create(
        folder,
        name="bench",
        schema=InstructionRecord,
        near_duplicate_threshold=threshold,
        durability=durability,  # type: ignore[arg-type]
    )
    alice = Account.create()
    start = time.perf_counter()
    for i in range(0, len(rows), 10_000):
        dn.contribute(rows[i : i + 10_000], contributor=alice)
    return time.perf_counter() - start, dn


def ours_small(rows: list[dict[str, str]], folder: Path, durability: str) -> tuple[float, Datanet]:
    """One contribution per record: where an fsync per commit costs the most."""
    dn = Datanet.create(
        folder,
        name="bench",
        schema=InstructionRecord,
        near_duplicate_threshold=0.0,
        durability=durability,  # type: ignore[arg-type]
    )
    alice = Account.create()
    start = time.perf_counter()
    for row in rows:
        dn.contribute([row], contributor=alice)
    return time.perf_counter() - start, dn


def naive(rows: list[dict[str, str]], folder: Path) -> float:
    conn = sqlite3.connect(folder / "naive.sqlite", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE records (hash BLOB UNIQUE, payload BLOB)")
    start = time.perf_counter()
    for row in rows:
        record = InstructionRecord.model_validate(row)
        payload = json.dumps(record.model_dump(), sort_keys=True).encode()
        conn.execute("BEGIN")
        conn.execute("INSERT INTO records VALUES (?, ?)", (keccak(payload), payload))
        conn.execute("COMMIT")
    return time.perf_counter() - start


def minimal(rows: list[dict[str, str]], folder: Path) -> float:
    conn = sqlite3.connect(folder / "minimal.sqlite", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE records (hash BLOB UNIQUE, payload BLOB)")
    start = time.perf_counter()
    for i in range(0, len(rows), 10_000):
        batch = []
        for row in rows[i : i + 10_000]:
            record = InstructionRecord.model_validate(row)
            payload = json.dumps(record.model_dump(), sort_keys=True).encode()
            batch.append((keccak(payload), payload))
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO records VALUES (?, ?)", batch)
        conn.execute("COMMIT")
    return time.perf_counter() - start


def remote(rows: list[dict[str, str]], url: str, batch: int = 10_000) -> float:
    """Contribute through a datanet service: sign here, post, the service verifies."""
    dn = RemoteDatanet(url)
    alice = Account.create()
    start = time.perf_counter()
    for i in range(0, len(rows), batch):
        dn.contribute(rows[i : i + batch], contributor=alice)
    took = time.perf_counter() - start
    dn.close()
    return took


def many_writers(location: str, writers: int, count: int) -> float:
    """Records/s of ``writers`` processes contributing ``count`` records each at once."""
    outcomes = run_writers(location, writers, count, batch=1_000, shared=0, timeout=1_800)
    took = max(o.finished for o in outcomes) - min(o.started for o in outcomes)
    return sum(len(o.record_hashes) for o in outcomes) / took


def empty(location: str, name: str) -> str:
    """Create an empty datanet (near-duplicate check off) at ``location``; return it."""
    Datanet.create(
        location, name=name, schema=InstructionRecord, near_duplicate_threshold=0.0
    ).close()
    return location


def stores(rows: list[dict[str, str]], tmp: Path, args: argparse.Namespace) -> None:
    """The same contributions into SQLite, PostgreSQL and a service over HTTP, one run."""
    server = None if args.postgres else start_postgres(fsync=True)
    base = args.postgres or server.url()  # type: ignore[union-attr]
    n = len(rows)
    try:
        print(
            f"stores: {n:,} records in batches of 10k, near-duplicate check off, "
            f"durability='full'; load average {os.getloadavg()[0]:.1f}"
        )
        sqlite_took, dn = ours(rows, tmp / "stores-sqlite", threshold=0.0)
        dn.close()
        pg_took, dn = ours(rows, _schema(base, "ingest"), threshold=0.0)
        dn.close()
        print(f"  SQLite (same run): {n / sqlite_took:,.0f} records/s")
        print(f"  PostgreSQL: {n / pg_took:,.0f} records/s ({sqlite_took / pg_took:.2f}x SQLite)")
        hosted = {
            "SQLite": empty(str(tmp / "http-sqlite"), "http-sqlite"),
            "PostgreSQL": empty(_schema(base, "http"), "http-postgres"),
            "crowd": empty(_schema(base, "crowdhttp"), "crowd"),
        }
        service = start_datanet_server(list(hosted.values()))
        try:
            for label, name in (("SQLite", "http-sqlite"), ("PostgreSQL", "http-postgres")):
                took = remote(rows, service.url(name))
                print(
                    f"  HTTP service -> {label} (RemoteDatanet signs here, one client): "
                    f"{n / took:,.0f} records/s ({sqlite_took / took:.2f}x SQLite direct)"
                )
            targets = {
                "SQLite": empty(str(tmp / "crowd-sqlite"), "crowd"),
                "PostgreSQL": empty(_schema(base, "crowd"), "crowd"),
                "HTTP service -> PostgreSQL": service.url("crowd"),
            }
            for label, location in targets.items():
                rate = many_writers(location, args.writers, args.writer_n)
                print(
                    f"  {args.writers} writer processes x {args.writer_n:,} records (batches "
                    f"of 1k), {label}: {rate:,.0f} records/s together"
                )
        finally:
            service.stop()
        print(f"  load average at the end: {os.getloadavg()[0]:.1f}")
    finally:
        if server is not None:
            server.stop()


def _schema(base: str, name: str) -> str:
    """A store URL on ``base``'s database naming a fresh schema."""
    root = base.split("?", 1)[0]
    return f"{root}?datanet={name}_{os.getpid()}_{time.monotonic_ns() % 10**6}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="records to ingest")
    parser.add_argument("--naive-n", type=int, default=20_000, help="records for the baseline")
    parser.add_argument("--small-n", type=int, default=2_000, help="one-record contributions")
    parser.add_argument("--repeats", type=int, default=3, help="snapshot/proof repeats")
    parser.add_argument("--postgres", default=None, help="a PostgreSQL URL to use instead of "
                        "starting a server (its database gets fresh schemas)")  # fmt: skip
    parser.add_argument("--writers", type=int, default=4, help="concurrent writer processes")
    parser.add_argument("--writer-n", type=int, default=5_000, help="records per writer")
    parser.add_argument("--stores-only", action="store_true", help="only the store rows")
    args = parser.parse_args()
    rows = make_rows(args.n, seed=1)
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        if not args.stores_only:
            sqlite_rows(rows, Path(tmp), args)
        stores(rows, Path(tmp), args)


def sqlite_rows(rows: list[dict[str, str]], tmp: Path, args: argparse.Namespace) -> None:
    """The SQLite rows: baselines, durability, near-duplicates, snapshots and proofs."""
    base = naive(make_rows(args.naive_n, seed=2), tmp)
    base_rate = args.naive_n / base
    print(
        f"naive baseline (validate, json+keccak, INSERT+COMMIT per record): "
        f"{base_rate:,.0f} records/s over {args.naive_n:,}"
    )
    lean = args.n / minimal(rows, tmp)
    print(
        f"minimal batched baseline (validate, json+keccak, one transaction per 10k): "
        f"{lean:,.0f} records/s over {args.n:,}"
    )
    # NOTE: run in the order normal, full, full, normal and average each mode, so that
    # whatever drifts during the run (page cache, other load) falls on both alike.
    times: dict[str, list[float]] = {"normal": [], "full": []}
    for number, mode in enumerate(("normal", "full", "full", "normal")):
        took, _ = ours(rows, tmp / f"{mode}-{number}", threshold=0.0, durability=mode)
        times[mode].append(took)
    normal, off = statistics.mean(times["normal"]), statistics.mean(times["full"])
    print(
        f"ours, near-duplicate check off, durability='normal' (previous default): "
        f"{args.n / normal:,.0f} records/s (mean of 2)"
    )
    print(
        f"ours, near-duplicate check off, durability='full' (default): "
        f"{args.n / off:,.0f} records/s, mean of 2 ({args.n / off / base_rate:.1f}x naive, "
        f"{args.n / off / lean:.2f}x minimal, {normal / off:.2f}x the 'normal' rate)"
    )
    small = make_rows(args.small_n, seed=4)
    took: dict[str, float] = {"normal": 0.0, "full": 0.0}
    for number, mode in enumerate(("normal", "full", "full", "normal")):
        seconds, _ = ours_small(small, tmp / f"small-{mode}-{number}", mode)
        took[mode] += seconds / 2
    print(
        f"ours, {args.small_n:,} contributions of one record each (mean of 2): "
        f"durability='normal' {args.small_n / took['normal']:,.0f} contributions/s, "
        f"'full' {args.small_n / took['full']:,.0f} contributions/s "
        f"({took['normal'] / took['full']:.2f}x the 'normal' rate)"
    )
    on, dn = ours(rows, tmp / "on", threshold=0.8)
    print(
        f"ours, near-duplicate check on (default): {args.n / on:,.0f} records/s "
        f"({args.n / on / base_rate:.1f}x naive, {args.n / on / lean:.2f}x minimal)"
    )
    snap_times, proof_times, first_proof = [], [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        snap = dn.snapshot()
        snap_times.append(time.perf_counter() - start)
        hashes = snap.record_hashes()
        start = time.perf_counter()
        snap.proof(hashes[0])
        first_proof.append(time.perf_counter() - start)
        sample = random.Random(3).sample(hashes, 1000)
        start = time.perf_counter()
        proofs = [snap.proof(h) for h in sample]
        proof_times.append((time.perf_counter() - start) / len(sample))
    leaf = snap.leaf(sample[0])
    assert verify_proof(snap.root, leaf[0], leaf[1], proofs[0])
    print(
        f"snapshot of {snap.count:,} records: median {statistics.median(snap_times):.2f} s "
        f"over {args.repeats}"
    )
    print(
        f"first proof on a reopened snapshot (builds the tree): median "
        f"{statistics.median(first_proof):.2f} s; then "
        f"{statistics.median(proof_times) * 1e6:.0f} us per proof ({len(proofs[0])} hashes)"
    )
    dn.close()


if __name__ == "__main__":
    main()
