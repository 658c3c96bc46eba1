"""Proof of attribution: influence of training records on answers, rewards, settlement.

Quick tour::

    import openledger as ol
    index = ol.attribution.InfluenceIndex.build(run.adapter, snapshot, method="datainf")
    report = index.attribute("Question?", "Answer.")
    report.contributor_shares()            # {address: share}, positive shares sum to 1
    split = ol.attribution.split_rewards([report], 10**18, ol.attribution.RewardPolicy())
    epoch = ol.attribution.settle([report], pool_wei=10**18, protocol=protocol)
    epoch.claim(alice)

    retriever = ol.attribution.Retriever(snapshot, "hybrid")    # "bm25" | "dense" | "hybrid"
    rag = ol.attribution.rag_answer("Question?", engine, retriever, adapter="medqa")
    rag.citations                          # [n] -> record hash, contributor

    spans = ol.attribution.SpanIndex.build(snapshot, tokenizer)   # any model: no gradients
    spans.attribute("Question?", "Answer.").spans                  # the answer's spans records hold
Methods, formulas, storage costs and encodings are described in docs/attribution.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from openledger.attribution.api import attribute
    from openledger.attribution.batched import COMPUTE_DTYPES
    from openledger.attribution.gradients import GradientLayout, Projector
    from openledger.attribution.index import IndexManifest, InfluenceIndex
    from openledger.attribution.influence import METHODS, Method
    from openledger.attribution.poa import (
        Epoch,
        Ledger,
        SignedReceipt,
        UsageReceipt,
        epoch_bond_penalties,
        settle,
    )
    from openledger.attribution.rag import (
        Ablation,
        Citation,
        RagAnswer,
        context_ablation,
        load_scoring_model,
    )
    from openledger.attribution.rag import answer as rag_answer
    from openledger.attribution.report import (
        METHOD_RELIABILITY,
        AttributionReport,
        MatchedSpan,
        RecordScore,
    )
    from openledger.attribution.retrieval import DenseEncoder, Passage, Retriever
    from openledger.attribution.rewards import (
        BPS,
        SHARE_UNITS,
        RewardPolicy,
        RewardSplit,
        largest_remainder,
        split_rewards,
    )
    from openledger.attribution.sharded import RayExecutor
    from openledger.attribution.spans import SpanIndex
    from openledger.attribution.storage import STORAGE_DTYPES

# NOTE: the names load on first use (PEP 562): the influence index pulls in transformers and
# PEFT (seconds), which code that needs only the reward arithmetic (the gateway's receipts)
# must not pay for.
_EXPORTS: dict[str, tuple[str, str]] = {
    "attribute": ("api", "attribute"),
    "COMPUTE_DTYPES": ("batched", "COMPUTE_DTYPES"),
    "GradientLayout": ("gradients", "GradientLayout"),
    "Projector": ("gradients", "Projector"),
    "IndexManifest": ("index", "IndexManifest"),
    "InfluenceIndex": ("index", "InfluenceIndex"),
    "METHODS": ("influence", "METHODS"),
    "Method": ("influence", "Method"),
    "Epoch": ("poa", "Epoch"),
    "Ledger": ("poa", "Ledger"),
    "SignedReceipt": ("poa", "SignedReceipt"),
    "UsageReceipt": ("poa", "UsageReceipt"),
    "epoch_bond_penalties": ("poa", "epoch_bond_penalties"),
    "settle": ("poa", "settle"),
    "Ablation": ("rag", "Ablation"),
    "Citation": ("rag", "Citation"),
    "RagAnswer": ("rag", "RagAnswer"),
    "context_ablation": ("rag", "context_ablation"),
    "load_scoring_model": ("rag", "load_scoring_model"),
    "rag_answer": ("rag", "answer"),
    "METHOD_RELIABILITY": ("report", "METHOD_RELIABILITY"),
    "AttributionReport": ("report", "AttributionReport"),
    "MatchedSpan": ("report", "MatchedSpan"),
    "RecordScore": ("report", "RecordScore"),
    "DenseEncoder": ("retrieval", "DenseEncoder"),
    "Passage": ("retrieval", "Passage"),
    "Retriever": ("retrieval", "Retriever"),
    "BPS": ("rewards", "BPS"),
    "SHARE_UNITS": ("rewards", "SHARE_UNITS"),
    "RewardPolicy": ("rewards", "RewardPolicy"),
    "RewardSplit": ("rewards", "RewardSplit"),
    "largest_remainder": ("rewards", "largest_remainder"),
    "split_rewards": ("rewards", "split_rewards"),
    "RayExecutor": ("sharded", "RayExecutor"),
    "SpanIndex": ("spans", "SpanIndex"),
    "STORAGE_DTYPES": ("storage", "STORAGE_DTYPES"),
}
"""Each public name's module (under ``openledger.attribution``) and name there."""

__all__ = [
    "BPS",
    "COMPUTE_DTYPES",
    "METHODS",
    "METHOD_RELIABILITY",
    "SHARE_UNITS",
    "STORAGE_DTYPES",
    "Ablation",
    "AttributionReport",
    "Citation",
    "DenseEncoder",
    "Epoch",
    "GradientLayout",
    "IndexManifest",
    "InfluenceIndex",
    "Ledger",
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


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
