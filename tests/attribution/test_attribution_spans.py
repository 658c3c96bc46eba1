"""Span attribution: suffix arrays against sorting, matches against a loop, rare facts win."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.attribution.conftest import make_snapshot

from openledger.attribution import SpanIndex, attribute
from openledger.attribution.spans import SpanSettings
from openledger.attribution.suffix_array import (
    SEPARATOR,
    longest_matches,
    suffix_array,
    suffix_array_numpy,
)
from openledger.crypto import Account
from openledger.data import Datanet, InstructionRecord
from openledger.exceptions import AccessDeniedError, AttributionInputError
from openledger.models import tiny_tokenizer

tokens_lists = st.lists(st.integers(0, 4), max_size=40)


def naive_suffix_array(tokens: list[int]) -> list[int]:
    return sorted(range(len(tokens)), key=lambda i: tokens[i:])


@settings(max_examples=200, deadline=None)
@given(tokens=tokens_lists)
def test_both_constructions_sort_every_suffix(tokens: list[int]) -> None:
    array = np.asarray(tokens, dtype=np.uint32)
    want = naive_suffix_array(tokens)
    assert suffix_array_numpy(array).tolist() == want
    assert suffix_array(array).tolist() == want  # the C library where installed


@settings(max_examples=150, deadline=None)
@given(
    records=st.lists(st.lists(st.integers(0, 4), min_size=1, max_size=12), min_size=1, max_size=6),
    query=st.lists(st.integers(0, 5), min_size=1, max_size=10),
    cap=st.integers(1, 8),
)
def test_longest_matches_equal_a_loop_over_every_span(
    records: list[list[int]], query: list[int], cap: int
) -> None:
    flat = [t for record in records for t in [*record, int(SEPARATOR)]]
    corpus = np.asarray(flat, dtype=np.uint32)
    sa = suffix_array(corpus)
    padded = np.concatenate([corpus, np.full(cap, SEPARATOR, dtype=np.uint32)])
    found = longest_matches(padded, sa, np.asarray(query, dtype=np.int64), cap)
    for start in range(len(query)):
        longest, places = 0, []
        for length in range(1, min(cap, len(query) - start) + 1):
            span = query[start : start + length]
            hits = [i for i in range(len(flat)) if flat[i : i + length] == span]
            if hits:
                longest, places = length, hits
        assert found.lengths[start] == longest
        rows = sa[found.lo[start] : found.hi[start]]
        assert sorted(rows.tolist()) == (places if longest else [])


FACTS = [
    InstructionRecord(instruction="When does the Blue Ferry leave?", response="At 5:40 daily."),
    InstructionRecord(instruction="Price of a day pass?", response="A day pass costs 7 marks."),
    InstructionRecord(instruction="Where is the market?", response="By the old harbour gate."),
    InstructionRecord(instruction="Is the museum open?", response="Open daily until six."),
]


@pytest.fixture
def accounts() -> list[Account]:
    return [Account.create() for _ in FACTS]


@pytest.fixture
def facts(tmp_path: Path, accounts: list[Account]) -> SpanIndex:
    snapshot = make_snapshot(tmp_path / "dn", [[r] for r in FACTS], accounts)
    return SpanIndex.build(snapshot, tiny_tokenizer(), settings=SpanSettings(min_tokens=3))


def test_the_record_holding_a_stated_fact_gets_the_credit(
    facts: SpanIndex, accounts: list[Account]
) -> None:
    report = facts.attribute("How much is a pass?", "It costs 7 marks for the day.")
    assert report.method == "spans"
    assert report.top(1)[0].record_hash == facts.record_hashes[1]
    assert max(report.contributor_shares().items(), key=lambda kv: kv[1])[0] == accounts[1].address
    assert any("7 marks" in span.text for span in report.spans)
    assert "<mark" in report._repr_html_()
    ferry = facts.attribute("Ferry?", "The Blue Ferry leaves at 5:40.")
    assert ferry.top(1)[0].record_hash == facts.record_hashes[0]
    assert "When does the Blue Ferry" in ferry.top(1)[0].text


def test_a_phrase_every_record_holds_earns_nothing(tmp_path: Path) -> None:
    shared = "Ask at the visitor desk."
    records = [
        InstructionRecord(instruction=f"Question {w}?", response=f"{w} answer. {shared}")
        for w in ("alpha", "bravo", "charlie")
    ]
    snapshot = make_snapshot(tmp_path / "dn", [records], [Account.create()])
    index = SpanIndex.build(snapshot, tiny_tokenizer())
    report = index.attribute("Where?", shared)
    assert report.spans
    assert all(span.weight == 0 for span in report.spans)
    assert all(r.score == 0 for r in report.records)
    assert report.contributor_shares() == {}
    bravo = index.attribute("Where?", f"bravo answer. {shared}")
    assert bravo.top(1)[0].record_hash == index.record_hashes[1]


def test_a_saved_index_reloads_owner_only_and_checks_what_it_is_used_with(
    facts: SpanIndex, tmp_path: Path
) -> None:
    folder = facts.save(tmp_path / "spans")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o600}
    again = SpanIndex.load(folder, facts.tokenizer, snapshot=facts.snapshot)
    answer = "A day pass costs 7 marks."
    assert again.attribute("Pass?", answer).scores() == facts.attribute("Pass?", answer).scores()
    with pytest.raises(AttributionInputError, match="tokenizer"):
        SpanIndex.load(folder, tiny_tokenizer(400))
    other = make_snapshot(tmp_path / "other", [FACTS[:1]], [Account.create()])
    with pytest.raises(AttributionInputError, match="snapshot"):
        SpanIndex.load(folder, facts.tokenizer, snapshot=other)
    with pytest.raises(AttributionInputError, match="no readable span index"):
        SpanIndex.load(tmp_path, facts.tokenizer)


def test_a_private_datanet_needs_a_grant_and_bad_input_is_named(
    tmp_path: Path, facts: SpanIndex
) -> None:
    owner, reader = Account.create(), Account.create()
    datanet = Datanet.create(
        tmp_path / "private", name="p", schema=InstructionRecord, visibility="private", owner=owner
    )
    datanet.contribute(FACTS, contributor=owner)
    snapshot = datanet.snapshot()
    with pytest.raises(AccessDeniedError):
        SpanIndex.build(snapshot, tiny_tokenizer())
    request = datanet.request_access(reader, "attribution")
    grant = datanet.approve(request.id, owner=owner, ttl_seconds=600)
    index = SpanIndex.build(snapshot, tiny_tokenizer(), grant=grant)
    assert index.attribute("Pass?", "A day pass costs 7 marks.").top(1)[0].text
    datanet.revoke(request.id, owner=owner)
    with pytest.raises(AccessDeniedError):
        index.attribute("Pass?", "A day pass costs 7 marks.")
    datanet.close()
    for prompt, completion in (("", "x y"), ("Pass?", " "), ("Pass?", None)):
        with pytest.raises(AttributionInputError, match="must be a non-empty string"):
            facts.attribute(prompt, completion)  # type: ignore[arg-type]
    with pytest.raises(AttributionInputError, match="min_tokens"):
        SpanSettings(min_tokens=0)


def test_attribute_with_spans_uses_the_adapter_base_tokenizer(colour_run: tuple) -> None:
    snapshot, run, accounts = colour_run
    report = attribute(
        run.adapter, snapshot, prompt="Code teal?", completion="TEAL ok.", method="spans"
    )
    assert report.method == "spans"
    assert report.adapter_id == run.adapter.id
    top = report.top(1)[0]
    assert "teal" in top.text.lower()
    assert top.contributor == accounts[1].address  # teal is the seventh record: the second's
