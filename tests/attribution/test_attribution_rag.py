"""RAG attribution: BM25 retrieval, citations, context ablation, answers through adapters."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from openledger.attribution import split_rewards
from openledger.attribution.rag import (
    Passage,
    RagAnswer,
    Retriever,
    answer,
    citations_of,
    context_ablation,
    lasso,
    load_scoring_model,
)
from openledger.crypto import Account
from openledger.data import Datanet, InstructionRecord, Snapshot
from openledger.exceptions import AdapterNotFoundError, AttributionInputError
from openledger.train import TrainingRun

pytest.importorskip("bm25s")

FACTS = [
    ("What is the vault code?", "The vault code is 4721."),
    ("What colour are bananas?", "Ripe bananas are yellow."),
    ("Where is the library?", "The library is next to the old train station."),
    ("Who feeds the cat?", "Maria feeds the cat every morning."),
]


@pytest.fixture(scope="module")
def facts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Snapshot, list[Account]]]:
    folder = tmp_path_factory.mktemp("rag")
    accounts = [Account.create() for _ in FACTS]
    datanet = Datanet.create(folder / "dn", name="facts", schema=InstructionRecord)
    for (question, reply), account in zip(FACTS, accounts, strict=True):
        datanet.contribute([{"instruction": question, "response": reply}], contributor=account)
    yield datanet.snapshot(), accounts
    datanet.close()


def test_bm25_finds_the_record_that_answers(facts: tuple[Snapshot, list[Account]]) -> None:
    snapshot, accounts = facts
    retriever = Retriever(snapshot)
    found = retriever.search("what is the code of the vault", k=2)
    assert len(found) == 2
    assert "4721" in found[0].text
    assert found[0].contributor == accounts[0].address
    assert found[0].score > found[1].score
    assert len(retriever.search("cat", k=10)) == len(FACTS)
    with pytest.raises(AttributionInputError, match="question"):
        retriever.search("  ")


def passages(snapshot: Snapshot) -> tuple[Passage, ...]:
    return tuple(Retriever(snapshot).search("vault code bananas library", k=3))


def test_citations_map_to_records_and_pay_their_contributors(
    facts: tuple[Snapshot, list[Account]],
) -> None:
    snapshot, _ = facts
    given = passages(snapshot)
    cited = citations_of("It is 4721 [1], see also [3][1] and [9].", given)
    assert [c.number for c in cited] == [1, 3]
    assert [c.record_hash for c in cited] == [given[0].record_hash, given[2].record_hash]
    rag = RagAnswer("q", "4721 [1] [3]", given, cited, "smollm2", snapshot)
    report = rag.report()
    assert report.method == "citations"
    assert report.snapshot_root == snapshot.root
    split = split_rewards([report], 101)
    first, third = given[0].contributor, given[2].contributor
    assert first is not None
    assert third is not None
    low, high = sorted([first, third], key=str.lower)  # the odd wei goes to the lower address
    assert split.contributors == {low: 51, high: 50}


def test_lasso_recovers_a_sparse_linear_rule() -> None:
    masks = torch.rand(64, 5, generator=torch.Generator().manual_seed(1)) < 0.5
    targets = 3.0 * masks[:, 1].double() - 1.0 * masks[:, 4].double() + 0.5
    weights = lasso(masks.double(), targets, l1=0.01)
    assert weights[1] == pytest.approx(3.0, abs=0.1)
    assert weights[4] == pytest.approx(-1.0, abs=0.1)
    assert all(abs(weights[j]) < 0.05 for j in (0, 2, 3))


@pytest.fixture(scope="module")
def smollm2(smollm2_dir: Path) -> tuple[Any, Any]:
    from openledger.models import load_base_model

    return load_base_model(str(smollm2_dir), dtype="float32", device="cpu")


def test_context_ablation_finds_the_passage_the_answer_used(
    facts: tuple[Snapshot, list[Account]], smollm2: tuple[Any, Any]
) -> None:
    snapshot, _ = facts
    given = passages(snapshot)
    vault = next(i for i, p in enumerate(given) if "4721" in p.text)
    rag = RagAnswer("What is the vault code?", "The vault code is 4721.", given, (), "m", snapshot)
    model, tokenizer = smollm2
    scores = context_ablation(rag, model, tokenizer, num_ablations=16)
    assert max(range(3), key=scores.leave_one_out.__getitem__) == vault
    assert max(range(3), key=scores.surrogate.__getitem__) == vault
    assert scores.leave_one_out[vault] > 1.0
    shares = rag.report(scores.surrogate, "context-ablation").contributor_shares()
    assert max(shares, key=shares.__getitem__) == given[vault].contributor


def test_leaving_a_contributor_out_finds_the_fact_its_twin_records_hide(
    facts: tuple[Snapshot, list[Account]], smollm2: tuple[Any, Any]
) -> None:
    snapshot, accounts = facts
    alice, bob = accounts[0].address, accounts[1].address
    # NOTE: two of alice's records state the code (twins), bob's is about bananas
    given = (
        Passage(f"0x{'01' * 32}", alice, "The vault code is 4721.", 1.0),
        Passage(f"0x{'02' * 32}", bob, "Ripe bananas are yellow.", 0.9),
        Passage(f"0x{'03' * 32}", alice, "Remember: the vault code is 4721.", 0.8),
    )
    rag = RagAnswer("What is the vault code?", "The vault code is 4721.", given, (), "m", snapshot)
    model, tokenizer = smollm2
    asked: list[int] = []

    def prompt(question: str, kept: Any) -> list[dict[str, str]]:
        asked.append(len(kept))
        return [{"role": "user", "content": "\n".join(p.text for p in kept) + "\n" + question}]

    scores = context_ablation(rag, model, tokenizer, num_ablations=0, prompt=prompt)
    assert sorted(asked) == [1, 2, 2, 2, 2, 3]  # NOTE: all, 3 leave-one-out, 2 contributors
    assert scores.surrogate == ()
    effects = dict(scores.by_contributor)
    assert list(effects) == [alice, bob]
    # NOTE: either twin alone costs the answer less than both together
    assert effects[alice] > max(scores.leave_one_out[0], scores.leave_one_out[2]) + 1.0
    assert effects[alice] > effects[bob]
    per_passage = scores.contributor_scores(given)
    assert per_passage[0] == per_passage[2] == pytest.approx(effects[alice] / 2)
    shares = rag.report(per_passage, "context ablation").contributor_shares()
    assert max(shares, key=shares.__getitem__) == alice
    with pytest.raises(AttributionInputError, match="passages"):
        scores.contributor_scores(given[:2])
    with pytest.raises(AttributionInputError, match="num_ablations"):
        context_ablation(rag, model, tokenizer, num_ablations=-1)


def test_answer_asks_the_engine_with_numbered_sources(
    facts: tuple[Snapshot, list[Account]], smollm2_dir: Path
) -> None:
    from openledger.serve import Engine, SamplingParams

    snapshot, _ = facts
    engine = Engine(str(smollm2_dir))
    rag = answer(
        "What is the vault code?",
        engine,
        Retriever(snapshot),
        params=SamplingParams(max_tokens=24),
        model="smollm2-135m-instruct",
    )
    assert rag.text
    assert "4721" in rag.passages[0].text
    assert {c.record_hash for c in rag.citations} <= {p.record_hash for p in rag.passages}
    with pytest.raises(AdapterNotFoundError, match="medqa"):
        answer("q?", engine, Retriever(snapshot), adapter="medqa")


ColourRun = tuple[Snapshot, TrainingRun, list[Account]]


def greedy_text(model: Any, tokenizer: Any, messages: list[dict[str, str]], count: int) -> str:
    """``count`` argmax tokens after the chat-formatted messages (EOS not special), decoded."""
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    new: list[int] = []
    with torch.no_grad():
        for _ in range(count):
            logits = model(input_ids=torch.tensor([ids + new])).logits[0, -1]
            new.append(int(logits.argmax()))
    return str(tokenizer.decode(new, skip_special_tokens=True)).strip()


def test_an_answer_through_an_adapter_is_scored_under_that_adapter(
    facts: tuple[Snapshot, list[Account]], colour_run: ColourRun, memorising_llama_dir: Path
) -> None:
    from openledger.attribution.rag import build_messages
    from openledger.crypto import keccak256_hex
    from openledger.serve import Engine, EngineConfig, SamplingParams

    snapshot, _ = facts
    _, run, _ = colour_run
    engine = Engine(str(memorising_llama_dir), EngineConfig(max_num_seqs=2))
    engine.add_adapter("colours", run.adapter.path)
    retriever, params = Retriever(snapshot), SamplingParams(max_tokens=8, ignore_eos=True)
    question = "Code red? What is the vault code?"
    tuned = answer(question, engine, retriever, params=params, adapter="colours", model="tiny")
    plain = answer(question, engine, retriever, params=params, model="tiny")
    assert tuned.adapter == "colours"
    assert tuned.text != plain.text  # the adapter reached the engine
    assert tuned.model_id == run.adapter.id == tuned.report().adapter_id
    assert plain.model_id == keccak256_hex(b"tiny")

    model, tokenizer = load_scoring_model(str(memorising_llama_dir), run.adapter.path)
    messages = build_messages(question, tuned.passages)
    assert greedy_text(model, tokenizer, messages, 8) == tuned.text  # the model that answered
    scored = context_ablation(tuned, model, tokenizer, num_ablations=4)
    base, _ = load_scoring_model(str(memorising_llama_dir))
    unadapted = context_ablation(plain, base, tokenizer, num_ablations=4)
    assert len(scored.leave_one_out) == len(tuned.passages) == 3
    assert scored.leave_one_out != unadapted.leave_one_out
    with pytest.raises(AttributionInputError, match="load_scoring_model"):
        context_ablation(tuned, base, tokenizer, num_ablations=4)


def test_bad_adapter_requests_are_refused(
    facts: tuple[Snapshot, list[Account]], tiny_llama_dir: Path
) -> None:
    from openledger.serve import Engine, EngineConfig, SamplingParams

    snapshot, _ = facts
    retriever = Retriever(snapshot)
    engine = Engine(str(tiny_llama_dir), EngineConfig(max_num_seqs=2, max_adapter_slots=0))
    with pytest.raises(AttributionInputError, match="serves no adapters"):
        answer("vault?", engine, retriever, adapter="colours")
    mixed = SamplingParams(adapter="other")
    with pytest.raises(AttributionInputError, match="differs"):
        answer("vault?", engine, retriever, params=mixed, adapter="colours")
    weighted = SamplingParams(adapter={"a": 0.5, "b": 0.5})
    with pytest.raises(AttributionInputError, match="one adapter"):
        answer("vault?", engine, retriever, params=weighted)
