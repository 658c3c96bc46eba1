"""Writer processes for the concurrency tests: contributors racing on one datanet.

Each writer signs its batch first (reading its nonce outside any lock, as a remote
contributor does) and then contributes it. Writers share contributor keys in pairs, so they
race for nonces, and every batch carries rows of a pool that all writers send, so they race
for duplicates. A refused batch is signed again (a nonce taken meanwhile) or sent again
without the rows that are stored now (a duplicate); what each writer had accepted comes
back to the test, which checks the store against it.
"""

from __future__ import annotations

import multiprocessing
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from openledger.crypto import Account
from openledger.exceptions import DataNotFoundError, DuplicateRecordError, NonceError

__all__ = [
    "Outcome",
    "batches",
    "check_exactly_once",
    "key_of",
    "run_writer",
    "run_writers",
    "shared_rows",
    "write",
    "writer_rows",
]


@dataclass
class Outcome:
    """What one writer stored and what was refused to it."""

    writer: int
    contributor: str
    record_hashes: list[str] = field(default_factory=list)
    nonces: list[int] = field(default_factory=list)
    nonce_refusals: int = 0
    duplicate_refusals: int = 0
    started: float = 0.0
    finished: float = 0.0


def key_of(writer: int) -> str:
    """Writers 2k and 2k+1 sign with the same key."""
    return "0x" + f"{writer // 2 + 1:02x}" * 32


def writer_rows(writer: int, count: int) -> list[dict[str, str]]:
    """Rows only this writer sends."""
    return [
        {"instruction": f"writer {writer} question {i} about {i * 7919 % 10007}",
         "response": f"answer {i} of writer {writer}: {i * 104729 % 99991}"}
        for i in range(count)
    ]  # fmt: skip


def shared_rows(count: int) -> list[dict[str, str]]:
    """Rows every writer sends (only one may store each)."""
    return [
        {"instruction": f"shared question {i} on {i * 31 % 97}",
         "response": f"shared answer {i}: {i * 61 % 89}"}
        for i in range(count)
    ]  # fmt: skip


def batches(writer: int, count: int, batch: int, shared: int) -> list[list[dict[str, str]]]:
    """The writer's own rows in batches, the shared rows spread over them."""
    own, pool = writer_rows(writer, count), shared_rows(shared)
    parts = [own[i : i + batch] for i in range(0, count, batch)]
    for i, row in enumerate(pool):
        parts[(i + writer) % len(parts)].append(row)
    return parts


def write(dn: Any, writer: int, parts: list[list[dict[str, str]]]) -> Outcome:
    """Contribute every batch to ``dn`` (a ``Datanet`` or a ``RemoteDatanet``), signing
    again on a nonce race and leaving out rows that another writer stored first."""
    account = Account.from_key(key_of(writer))
    outcome = Outcome(writer, account.address, started=time.time())
    for rows in parts:
        while rows:
            signed = dn.sign(rows, contributor=account)
            try:
                receipts = dn.contribute(rows, signed=signed)
            except NonceError:
                outcome.nonce_refusals += 1
                continue
            except DuplicateRecordError:
                outcome.duplicate_refusals += 1
                rows = [r for r in rows if not _stored(dn, r)]
                continue
            outcome.record_hashes.extend(r.record_hash for r in receipts)
            outcome.nonces.append(signed.nonce)
            break
    outcome.finished = time.time()
    return outcome


def _stored(dn: Any, row: dict[str, str]) -> bool:
    try:
        dn.get(dn.record_hash(row))
    except DataNotFoundError:
        return False
    return True


def run_writer(
    location: str, writer: int, parts: list[list[dict[str, str]]], barrier: Any, results: Any
) -> None:
    """A writer process: open the datanet (a store URL, or a service URL for
    ``RemoteDatanet``), wait for the others, write, and put the outcome on ``results``."""
    from openledger.data import Datanet

    if location.startswith("http"):
        from openledger.data import RemoteDatanet

        dn: Any = RemoteDatanet(location)
    else:
        dn = Datanet.open(location)
    try:
        barrier.wait(timeout=120)
        results.put(asdict(write(dn, writer, parts)))
    except BaseException as exc:
        results.put({"writer": writer, "error": repr(exc)})
        raise
    finally:
        dn.close()


def run_writers(
    location: str, writers: int, count: int, batch: int, shared: int, timeout: float = 300
) -> list[Outcome]:
    """Run ``writers`` writer processes on ``location`` at once; return their outcomes."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(writers), context.Queue()
    processes = [
        context.Process(
            target=run_writer,
            args=(location, w, batches(w, count, batch, shared), barrier, results),
        )
        for w in range(writers)
    ]
    for process in processes:
        process.start()
    try:
        found = [results.get(timeout=timeout) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    errors = [f for f in found if "error" in f]
    assert not errors, errors
    return [Outcome(**f) for f in sorted(found, key=lambda f: f["writer"])]


def check_exactly_once(dn: Any, outcomes: list[Outcome], count: int, shared: int) -> None:
    """Every row sent is stored once, by a writer that got its receipt; nonces are unique
    and gap-free per contributor; nothing of a refused batch is stored."""
    accepted = [h for o in outcomes for h in o.record_hashes]
    assert len(accepted) == len(set(accepted)), "a record was accepted twice"
    sent = {dn.record_hash(r) for o in outcomes for r in writer_rows(o.writer, count)}
    sent |= {dn.record_hash(r) for r in shared_rows(shared)}
    stored = [r.record_hash for r in dn.records()]
    assert len(stored) == len(set(stored)) == len(sent)
    assert set(stored) == set(accepted) == sent
    by_contributor: dict[str, list[int]] = {}
    for outcome in outcomes:
        by_contributor.setdefault(outcome.contributor, []).extend(outcome.nonces)
    rows = dn._store.conn.execute("SELECT contributor, nonce FROM contributions").fetchall()
    in_store: dict[str, list[int]] = {}
    for contributor, nonce in rows:
        in_store.setdefault(contributor, []).append(int(nonce))
    for contributor, nonces in by_contributor.items():
        assert sorted(nonces) == list(range(len(nonces))), contributor
        assert sorted(in_store[contributor]) == sorted(nonces), contributor
    assert set(in_store) == set(by_contributor)
