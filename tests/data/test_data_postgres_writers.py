"""Many writer processes on one PostgreSQL datanet: every record once, nonces never reused.

Six processes, paired on three contributor keys (they race for nonces), each send 500 rows
of their own in batches of 50 plus 60 rows that all of them send (they race for
duplicates). Each signs before it contributes, so a nonce can be taken between the two.
"""

from __future__ import annotations

import time

from tests.data.concurrent_writers import check_exactly_once, run_writers
from tests.data.postgres_server import PostgresServer

from openledger.data import Datanet, InstructionRecord

WRITERS, COUNT, BATCH, SHARED = 6, 500, 50, 60


def test_concurrent_writers_store_every_record_once(postgres: PostgresServer) -> None:
    url = postgres.fresh_url("writers")
    Datanet.create(url, name="crowd", schema=InstructionRecord).close()
    started = time.perf_counter()
    outcomes = run_writers(url, WRITERS, COUNT, BATCH, SHARED)
    took = time.perf_counter() - started
    with Datanet.open(url) as dn:
        check_exactly_once(dn, outcomes, COUNT, SHARED)
        assert len(dn) == WRITERS * COUNT + SHARED
        assert dn.audit().ok
    refused = sum(o.nonce_refusals + o.duplicate_refusals for o in outcomes)
    # NOTE: every shared row goes to every writer, so all but the first sender are refused.
    assert sum(o.duplicate_refusals for o in outcomes) >= 1
    print(f"{WRITERS * COUNT + SHARED} records in {took:.1f} s, {refused} refusals retried")
