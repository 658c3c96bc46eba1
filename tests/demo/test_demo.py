"""``openledger demo``: the whole loop in fast mode, the shipped data, the report, bad input."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from openledger.attribution import SHARE_UNITS, Retriever
from openledger.cli import main
from openledger.data import Datanet, InstructionRecord, Snapshot
from openledger.demo import DemoConfig, DemoDataset, DemoResult, load_datasets, run_demo
from openledger.demo.report import bar_chart, line_chart
from openledger.demo.stages import (
    answer_sentence,
    demo_account,
    rag_messages,
    retrieval_answer,
)
from openledger.exceptions import ConfigError
from openledger.gateway import ReceiptLedger, ledger_settings, load_operator_key

POOL = 10**18 + 3


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoResult, str]:
    out = io.StringIO()
    folder = tmp_path_factory.mktemp("demo") / "run"
    result = run_demo(DemoConfig(output_dir=folder, fast=True, pool_wei=POOL), out)
    return result, out.getvalue()


def test_the_fast_demo_pays_out_exactly_the_pool_and_every_claim_lands(
    fast_run: tuple[DemoResult, str],
) -> None:
    result, _ = fast_run
    assert result.pool_wei == POOL
    assert sum(result.payouts.values()) == POOL
    assert result.claimed == result.payouts
    assert result.payouts["devon"] == POOL * 1_000 // 10_000
    assert result.payouts["treasury"] == POOL * 500 // 10_000
    contributors = {name for d in load_datasets() for name in d.contributors}
    assert set(result.payouts) - {"devon", "treasury"} <= contributors
    assert set(result.payouts) - {"devon", "treasury"}, "no contributor was paid"


def test_every_stage_ran_and_printed_its_summary(fast_run: tuple[DemoResult, str]) -> None:
    result, text = fast_run
    headings = re.findall(r"^\[(\d)\] ", text, flags=re.MULTILINE)
    assert headings == [str(i) for i in range(1, 9)]
    assert len(result.timings) == 8
    assert text.count("a record's Merkle proof checks on chain: True") == 2
    assert "balances equal payouts: True" in text
    assert f"report: {result.report_path}" in text
    for dataset in load_datasets():
        assert f"{dataset.name}: 24 signed records" in text
        for question in dataset.questions:
            assert f"[{dataset.name}] user> {question.text}" in text
        assert f"[base + retrieval] user> {dataset.rag_question.text}" in text


def test_answers_came_from_both_adapters_the_base_model_and_retrieval(
    fast_run: tuple[DemoResult, str],
) -> None:
    result, _ = fast_run
    adapters = {a.adapter for a in result.answers}
    assert adapters == {None, "harbour-transit", "greenhollow-garden"}
    assert sum(a.retrieval for a in result.answers) == 2
    for answer in result.answers:
        assert answer.tokens > 0
        if answer.adapter is not None:
            assert answer.shares, f"no attribution for {answer.question!r}"
            # NOTE: shares come quantised from the ledger: each within half a unit
            rounding = len(answer.shares) * 0.5 / SHARE_UNITS
            assert abs(sum(answer.shares.values()) - 1.0) <= rounding


def test_answers_went_through_the_gateway_and_the_epoch_came_from_its_receipts(
    fast_run: tuple[DemoResult, str],
) -> None:
    result, text = fast_run
    served = [a for a in result.answers if not a.retrieval]
    assert all(a.receipt_id for a in served)
    assert [r["receipt_id"] for r in result.receipts] == [a.receipt_id for a in served]
    tokens = {r["receipt_id"]: r["tokens"] for r in result.receipts}
    assert all(tokens[a.receipt_id] == a.tokens for a in served)
    assert all(r["payer"] == "ursula" for r in result.receipts)
    credited = {r["receipt_id"] for r in result.receipts if r["credited"]}
    assert credited == {a.receipt_id for a in served if a.adapter is not None}
    ledger = result.output_dir / "gateway.db"
    operator = load_operator_key(Path(f"{ledger}.operator-key"))
    with ReceiptLedger(ledger) as book:
        for signed in book.receipts():
            signed.verify(operator.address, ledger_settings(book).domain)
        assert book.count_pending() == (0, 0)
    assert f"{len(served)} signed receipts in gateway.db, one per answer" in text
    page = result.report_path.read_text(encoding="utf-8")
    assert f"built from the {len(served)} signed receipts the gateway wrote" in page


def test_the_datanets_and_models_are_recorded_with_their_ids(
    fast_run: tuple[DemoResult, str],
) -> None:
    result, _ = fast_run
    assert [d["name"] for d in result.datanets] == ["harbour-transit", "greenhollow-garden"]
    for row in result.datanets:
        assert re.fullmatch(r"0x[0-9a-f]{64}", row["root"])
        assert re.fullmatch(r"0x[0-9a-f]{64}", row["chain_id"])
        assert sum(row["contributors"].values()) == row["records"] == 24
    for run in result.training:
        assert run["steps"] == 40
        assert run["curve"], "no loss curve recorded"
        assert run["adapter_id"] != run["model_id"]
        assert (result.output_dir / "adapters" / run["name"] / "openledger_manifest.json").is_file()


def test_the_html_report_shows_every_section(fast_run: tuple[DemoResult, str]) -> None:
    result, _ = fast_run
    page = result.report_path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    for section in ("1. Datanets", "2. Fine-tuning", "3. Answers", "4. Settlement", "5. Timings"):
        assert section in page
    charted = sum(1 for a in result.answers if a.shares)
    assert page.count("<svg") == 1 + charted + 1  # loss curves, share bars, payouts
    assert f"{POOL}</b> wei (exactly the pool)" in page
    assert "missing" not in page
    for row in result.datanets:
        assert row["root"] in page


def test_every_answer_with_a_known_fact_gets_an_honest_verdict(
    fast_run: tuple[DemoResult, str],
) -> None:
    result, text = fast_run
    assert "has not learned" not in text
    checked = [a for a in result.answers if a.expected]
    assert len(checked) == 6  # four adapter answers, two retrieval answers
    for answer in checked:
        # NOTE: the tiny random model's answers are gibberish: each must be called wrong
        assert answer.states_fact is False, answer.text
    assert text.count("WRONG: the answer does not state the datanet's fact") == 6
    assert "right: the answer states" not in text


def test_a_verdict_names_the_right_answer_and_who_got_the_top_share() -> None:
    from openledger.demo.runner import DemoAnswer
    from openledger.demo.stages import _verdict

    dataset = load_datasets()[0]
    question = dataset.questions[0]
    answer = DemoAnswer(
        question.text, dataset.name, f"So: {question.expected}.", 10, 0.1,
        teacher=question.teacher, expected=question.expected,
    )  # fmt: skip
    assert _verdict(answer, question.teacher, dataset) == (
        f"right: the answer states {question.teacher}'s fact ({question.expected}), "
        f"and {question.teacher} gets the top share"
    )
    assert _verdict(answer, "zed", dataset).endswith(
        f"({question.expected}), but zed gets the top share, not {question.teacher}"
    )


def test_demo_accounts_are_derived_from_their_names() -> None:
    assert demo_account("alice") == demo_account("alice")
    assert demo_account("alice").address != demo_account("bob").address


def test_the_shipped_datanets_teach_each_answer_through_one_contributor() -> None:
    datasets = load_datasets()
    assert len(datasets) == 2
    for dataset in datasets:
        assert len(dataset.records) == 192
        groups = dataset.by_contributor()
        assert {len(g) for g in groups.values()} == {48}
        instructions = [r["instruction"] for _, r in dataset.records]
        assert len(set(instructions)) == len(instructions)
        for question in (*dataset.questions, dataset.rag_question):
            holders = {
                name
                for name, records in groups.items()
                if any(question.expected in r["response"] for r in records)
            }
            assert holders == {question.teacher}, question.text
            # NOTE: a fact stated once is rarely learnt in a short run: several records
            # (differently worded questions) state each fact the demo asks about
            stating = [r for _, r in dataset.records if question.expected in r["response"]]
            assert len(stating) >= 2, question.text
            assert len({r["instruction"] for r in stating}) == len(stating)
        assert {len(g) for g in dataset.by_contributor(6).values()} == {6}


def _snapshot(folder: Path, dataset: DemoDataset) -> Snapshot:
    datanet = Datanet.create(
        folder / dataset.name,
        name=dataset.name,
        schema=InstructionRecord,
        owner=demo_account("olivia"),
    )
    for name, records in dataset.by_contributor().items():
        datanet.contribute(records, contributor=demo_account(name))
    return datanet.snapshot()


def test_retrieval_finds_the_teachers_record_for_every_question(tmp_path: Path) -> None:
    for dataset in load_datasets():
        retriever = Retriever(_snapshot(tmp_path, dataset))
        for question in (*dataset.questions, dataset.rag_question):
            first = retriever.search(question.text, 3)[0]
            assert first.contributor == demo_account(question.teacher).address, question.text
            assert question.expected in first.text, question.text


@pytest.mark.parametrize(
    ("generated", "answer"),
    [
        (" A: Turn the compost heap every two weeks.", "Turn the compost heap every two weeks."),
        ("a:Water mint often.", "Water mint often."),
        ("Night bus N3 runs from Quay 2.", "Night bus N3 runs from Quay 2."),
        ("A dog barks: loudly.", "A dog barks: loudly."),
    ],
)
def test_a_retrieval_answer_drops_the_label_of_its_sources_layout(
    generated: str, answer: str
) -> None:
    assert answer_sentence(generated) == answer


def test_rag_messages_number_the_sources_and_end_with_the_question() -> None:
    records = [
        InstructionRecord(instruction="Q one?", response="A one."),
        InstructionRecord(instruction="Q two?", response="A two."),
    ]
    system, user = rag_messages("Why?", records)
    assert system["role"] == "system"
    assert user == {
        "role": "user",
        "content": "Sources:\n[1] Q: Q one? A: A one.\n[2] Q: Q two? A: A two.\n\nQuestion: Why?",
    }


@pytest.mark.slow
def test_the_base_model_answers_from_its_sources_and_the_teacher_gets_the_top_share(
    smollm2_dir: Path, tmp_path: Path
) -> None:
    from openledger.models import load_base_model
    from openledger.serve import Engine

    engine = Engine(smollm2_dir)
    model, tokenizer = load_base_model(smollm2_dir)
    for dataset in load_datasets():
        question = dataset.rag_question
        found, _, ablation = retrieval_answer(
            question.text, _snapshot(tmp_path, dataset), engine, model, tokenizer
        )
        effect = dict(ablation.by_contributor)
        assert question.expected in found.text, found.text
        assert len(ablation.leave_one_out) == len(found.passages) == 3
        teacher = demo_account(question.teacher).address
        assert max(effect, key=lambda a: effect[a]) == teacher, (found.text, effect)
        assert effect[teacher] > 0


def test_a_folder_the_demo_did_not_make_is_refused_and_kept(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not made by `openledger demo`"):
        run_demo(DemoConfig(output_dir=tmp_path, fast=True), io.StringIO())
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert main(["demo", "--fast", "--output", str(tmp_path)]) == 2


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"pool_wei": 0}, "pool_wei must be positive"),
        ({"developer_bps": 9_000, "protocol_bps": 2_000}, "must be within 0..10000"),
        ({"developer_bps": -1}, "must not be negative"),
        ({"max_tokens": 0}, "max_tokens must be >= 1"),
    ],
)
def test_bad_settings_are_refused(changes: dict[str, int], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DemoConfig(**changes)  # type: ignore[arg-type]


def test_the_cli_refuses_a_bad_pool(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--fast", "--pool", "0"]) == 2
    assert "--pool must be positive" in capsys.readouterr().err


def test_charts_handle_negative_empty_and_non_finite_values() -> None:
    assert "no data" in line_chart({})
    assert "no data" in line_chart({"a": [(0.0, float("nan"))]})
    svg = line_chart({"a": [(0, 2.0), (1, 1.0)], "b": [(0, 3.0)]}, x_label="step")
    assert svg.count("<polyline") == 2
    bars = bar_chart({"x": 0.75, "y": -0.25}, highlight="x")
    assert bars.count("<rect") == 2
    assert "75.0%" in bars
    assert "-25.0%" in bars
    assert "no data" in bar_chart({})
