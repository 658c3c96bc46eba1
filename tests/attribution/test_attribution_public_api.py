"""The public surface of openledger.attribution is pinned."""

from __future__ import annotations

import openledger.attribution as attribution

PUBLIC = [
    "Ablation",
    "AttributionReport",
    "BPS",
    "COMPUTE_DTYPES",
    "Citation",
    "DenseEncoder",
    "Epoch",
    "GradientLayout",
    "IndexManifest",
    "InfluenceIndex",
    "Ledger",
    "METHODS",
    "METHOD_RELIABILITY",
    "MatchedSpan",
    "Method",
    "Passage",
    "Projector",
    "RagAnswer",
    "RayExecutor",
    "RecordScore",
    "Retriever",
    "RewardPolicy",
    "RewardSplit",
    "SHARE_UNITS",
    "STORAGE_DTYPES",
    "SignedReceipt",
    "SpanIndex",
    "UsageReceipt",
    "attribute",
    "context_ablation",
    "epoch_bond_penalties",
    "largest_remainder",
    "load_scoring_model",
    "rag_answer",
    "settle",
    "split_rewards",
]


def test_public_api_is_pinned() -> None:
    assert sorted(attribution.__all__) == sorted(PUBLIC)
    for name in attribution.__all__:
        assert hasattr(attribution, name), name
