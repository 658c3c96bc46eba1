"""Retrieval-augmented answers with citations, and which retrieved records they really used.

::

    snapshot ── Retriever (BM25, bm25s) ── passages [1..k] ── prompt ── engine ── answer
                                                                          │
    citations: "[n]" in the answer -> record hash + contributor ──────────┤
    context ablation: log p(answer | kept passages) over ablations ───────┴── AttributionReport

Context ablation (as in ContextCite) scores passage ``i`` two ways: leave-one-out
``log p(answer | all) - log p(answer | all but i)``, and the weights of a sparse linear
surrogate ``log p(answer | mask) ~ w0 + sum_i w_i mask_i`` fitted (L1, coordinate descent)
to random half-ablations. The answer's log-probability is summed over its tokens after the
chat-formatted prompt. Reports from RAG name the model by ``keccak256(UTF-8 model name)``
in their ``adapter_id`` field (there is no adapter).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from openledger.attribution.examples import record_text
from openledger.attribution.report import AttributionReport, RecordScore
from openledger.crypto import keccak256_hex
from openledger.data import AccessGrant, Snapshot
from openledger.exceptions import AttributionInputError, MissingDependencyError
from openledger.types import Address, Hash32

__all__ = [
    "Ablation",
    "Citation",
    "Passage",
    "RagAnswer",
    "Retriever",
    "answer",
    "build_messages",
    "context_ablation",
]

_CITE = re.compile(r"\[(\d{1,3})\]")


@dataclass(frozen=True, slots=True)
class Passage:
    """A retrieved record: hash, contributor, text, retrieval score."""

    record_hash: Hash32
    contributor: Address | None
    text: str
    score: float


@dataclass(frozen=True, slots=True)
class Citation:
    """A ``[number]`` in an answer mapped to the passage (record) it names."""

    number: int
    record_hash: Hash32
    contributor: Address | None


class Retriever:
    """BM25 retrieval over a snapshot's records (``pip install bm25s``).

    Args:
        snapshot: The snapshot to search.
        grant: Access grant for a private datanet.

    Raises:
        MissingDependencyError: If bm25s is not installed.
        AttributionInputError: If the snapshot has no records.
    """

    def __init__(self, snapshot: Snapshot, *, grant: AccessGrant | None = None) -> None:
        bm25s = _bm25s()
        self.snapshot = snapshot
        self._records = list(snapshot.records(grant=grant))
        if not self._records:
            raise AttributionInputError("the snapshot has no records to retrieve from")
        self._texts = [record_text(r.record) for r in self._records]
        self._bm25 = bm25s.BM25()
        self._bm25.index(_tokens(self._texts), show_progress=False)

    def search(self, query: str, k: int = 3) -> list[Passage]:
        """Return the ``k`` best records for ``query`` (fewer if the snapshot is smaller)."""
        if not isinstance(query, str) or not query.strip():
            raise AttributionInputError("the question must be a non-empty string")
        count = min(k, len(self._records))
        found, scores = self._bm25.retrieve(_tokens([query]), k=count, show_progress=False)
        return [self._passage(int(i), float(s)) for i, s in zip(found[0], scores[0], strict=True)]

    def _passage(self, index: int, score: float) -> Passage:
        stored = self._records[index]
        return Passage(stored.record_hash, stored.contributor, self._texts[index], score)


def _bm25s() -> Any:
    try:
        return importlib.import_module("bm25s")
    except ImportError:
        raise MissingDependencyError(
            "BM25 retrieval needs bm25s: `pip install bm25s` (or openledger[rag])"
        ) from None


def _tokens(texts: list[str]) -> Any:
    return _bm25s().tokenize(texts, stopwords="en", show_progress=False)


def build_messages(question: str, passages: Sequence[Passage]) -> list[dict[str, str]]:
    """Return the chat messages of a question with numbered sources ``[1] ... [k]``."""
    sources = "\n".join(f"[{n}] {p.text}" for n, p in enumerate(passages, start=1))
    content = (
        "Answer the question using the numbered sources, and cite the sources you use "
        f"like [1].\n\nSources:\n{sources}\n\nQuestion: {question}"
    )
    return [{"role": "user", "content": content}]


@dataclass(frozen=True, slots=True)
class RagAnswer:
    """An answer with the passages it was given and the citations it made.

    Attributes:
        question: The question.
        text: The answer.
        passages: The retrieved passages, numbered from 1 in the prompt.
        citations: The valid ``[n]`` in the answer, in order of first appearance.
        model: The model name that answered.
        snapshot: The snapshot retrieved from.
    """

    question: str
    text: str
    passages: tuple[Passage, ...]
    citations: tuple[Citation, ...]
    model: str
    snapshot: Snapshot

    def report(self, scores: Sequence[float] | None = None, method: str = "citations") -> Any:
        """Return an :class:`AttributionReport` over the passages.

        Args:
            scores: One score per passage (e.g. :attr:`Ablation.surrogate`); default each
                cited passage 1 and the others 0 (citation-based rewards).
            method: The method name recorded in the report.
        """
        cited = {c.record_hash for c in self.citations}
        values = (
            [1.0 if p.record_hash in cited else 0.0 for p in self.passages]
            if scores is None
            else list(scores)
        )
        if len(values) != len(self.passages):
            raise AttributionInputError("give one score per passage")
        records = tuple(
            RecordScore(p.record_hash, p.contributor, float(v), p.text)
            for p, v in zip(self.passages, values, strict=True)
        )
        model_hash = keccak256_hex(self.model.encode())
        snap = self.snapshot
        return AttributionReport(
            method, model_hash, snap.root, snap.datanet_id, self.question, self.text, records
        )


def citations_of(text: str, passages: Sequence[Passage]) -> tuple[Citation, ...]:
    """Return the ``[n]`` of ``text`` that name a passage, first appearance first."""
    seen: dict[int, Citation] = {}
    for match in _CITE.finditer(text):
        number = int(match.group(1))
        if 1 <= number <= len(passages) and number not in seen:
            passage = passages[number - 1]
            seen[number] = Citation(number, passage.record_hash, passage.contributor)
    return tuple(seen.values())


def answer(
    question: str,
    engine: Any,
    retriever: Retriever,
    *,
    k: int = 3,
    params: Any = None,
    adapter: str | None = None,
    model: str = "engine",
) -> RagAnswer:
    """Retrieve ``k`` passages, ask ``engine`` with numbered sources, map its citations.

    Args:
        question: The question.
        engine: An :class:`openledger.serve.Engine`.
        retriever: Over the snapshot to cite.
        k: Passages to retrieve.
        params: ``SamplingParams`` (default greedy, 64 tokens).
        adapter: Not supported yet (the engine serves its base model only).
        model: The served model's name (its keccak256 names it in reports).

    Raises:
        AttributionInputError: An empty question, or an adapter asked for.
    """
    from openledger.serve import SamplingParams

    if adapter is not None:
        raise AttributionInputError(
            "the engine does not serve adapters yet; merge the adapter "
            "(openledger.train.merge_and_save) and start an Engine on the merged folder"
        )
    passages = tuple(retriever.search(question, k))
    sampling = params if params is not None else SamplingParams(max_tokens=64)
    text = engine.generate(build_messages(question, passages), sampling)[0].text.strip()
    citations = citations_of(text, passages)
    return RagAnswer(question, text, passages, citations, model, retriever.snapshot)


@dataclass(frozen=True, slots=True)
class Ablation:
    """Context-ablation scores, one per passage.

    Attributes:
        leave_one_out: ``log p(answer | all) - log p(answer | all but i)``.
        surrogate: Weights of the sparse linear surrogate over random ablations.
        num_ablations: Random ablations the surrogate was fitted to.
    """

    leave_one_out: tuple[float, ...]
    surrogate: tuple[float, ...]
    num_ablations: int


def answer_logprob(model: Any, tokenizer: Any, messages: list[dict[str, str]], text: str) -> float:
    """Return ``log p(text | messages)`` summed over the answer's tokens."""
    import torch

    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    tail = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([list(head) + list(tail)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(head) - 1 : -1].float()
    picked = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(tail)[:, None])
    return float(picked.sum())


def lasso(features: Any, targets: Any, l1: float, sweeps: int = 200) -> list[float]:
    """Fit ``targets ~ w0 + features @ w`` with an L1 penalty (coordinate descent)."""
    x = features - features.mean(0)
    y = targets - targets.mean()
    count, width = x.shape
    weights = [0.0] * width
    residual = y.clone()
    norms = (x * x).sum(0) / count
    for _ in range(sweeps):
        for j in range(width):
            if float(norms[j]) == 0.0:
                continue
            residual += x[:, j] * weights[j]
            rho = float((x[:, j] * residual).sum()) / count
            weights[j] = (max(abs(rho) - l1, 0.0) * (1 if rho > 0 else -1)) / float(norms[j])
            residual -= x[:, j] * weights[j]
    return weights


def context_ablation(
    rag: RagAnswer,
    model: Any,
    tokenizer: Any,
    *,
    num_ablations: int = 32,
    l1: float = 0.01,
    seed: int = 0,
) -> Ablation:
    """Score how much the answer depended on each passage (see the module docstring).

    Args:
        rag: The answer and its passages.
        model: The causal LM that answered (Hugging Face model).
        tokenizer: Its tokenizer (with its chat template).
        num_ablations: Random half-ablations for the surrogate.
        l1: L1 penalty of the surrogate.
        seed: Seed of the ablation masks.
    """
    import torch

    passages = list(rag.passages)

    def logp(mask: list[bool]) -> float:
        kept = [p for p, keep in zip(passages, mask, strict=True) if keep]
        return answer_logprob(model, tokenizer, build_messages(rag.question, kept), rag.text)

    full = logp([True] * len(passages))
    loo = [full - logp([j != i for j in range(len(passages))]) for i in range(len(passages))]
    generator = torch.Generator().manual_seed(seed)
    masks = torch.rand(num_ablations, len(passages), generator=generator) < 0.5
    targets = torch.tensor([logp(m.tolist()) for m in masks], dtype=torch.float64)
    weights = lasso(masks.double(), targets, l1)
    return Ablation(tuple(loo), tuple(weights), num_ablations)
