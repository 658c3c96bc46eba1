"""Retrieval-augmented answers with citations, and which retrieved records they really used.

::

    snapshot ── Retriever ── passages [1..k] ── prompt ── engine (adapter?) ── answer
                                                                                │
    citations: "[n]" in the answer -> record hash + contributor ────────────────┤
    context ablation: log p(answer | kept passages), same model ────────────────┴── report

Retrieval is BM25, dense or hybrid (:mod:`.retrieval`). The engine answers with its base
model or a registered adapter. Context ablation (as in ContextCite) scores passage ``i``
two ways: leave-one-out ``log p(answer | all) - log p(answer | all but i)``, and the
weights of a sparse linear surrogate ``log p(answer | mask) ~ w0 + sum_i w_i mask_i``
fitted (L1, coordinate descent) to random half-ablations. It also leaves each
contributor out at once (all of their passages): one contributor often holds several
retrieved records stating the same fact, and leaving one of them out costs the answer
nothing while its twins remain (:meth:`Ablation.contributor_scores`). The answer's
log-probability is summed over its tokens after the chat-formatted prompt, under the model
that answered (for an adapter: the base model with that PEFT adapter,
:func:`load_scoring_model`).
Reports from RAG name the model by :attr:`RagAnswer.model_id` in their ``adapter_id``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from openledger.attribution.report import AttributionReport, RecordScore
from openledger.attribution.retrieval import Passage, Retriever
from openledger.crypto import keccak256_hex
from openledger.data import Snapshot
from openledger.exceptions import AttributionInputError
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
    "load_scoring_model",
]

_CITE = re.compile(r"\[(\d{1,3})\]")


@dataclass(frozen=True, slots=True)
class Citation:
    """A ``[number]`` in an answer mapped to the passage (record) it names."""

    number: int
    record_hash: Hash32
    contributor: Address | None


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
        adapter: The engine adapter that answered (None: the base model).
        adapter_id: That adapter's manifest id (None without adapter or manifest).
    """

    question: str
    text: str
    passages: tuple[Passage, ...]
    citations: tuple[Citation, ...]
    model: str
    snapshot: Snapshot
    adapter: str | None = None
    adapter_id: Hash32 | None = None

    @property
    def model_id(self) -> Hash32:
        """The id reports name the answering model by.

        The adapter's manifest id when one answered with a manifest; otherwise
        ``keccak256`` of the UTF-8 model name (``"<model>+<adapter>"`` with an adapter).
        """
        if self.adapter_id is not None:
            return self.adapter_id
        name = self.model if self.adapter is None else f"{self.model}+{self.adapter}"
        return Hash32(keccak256_hex(name.encode()))

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
        snap = self.snapshot
        return AttributionReport(
            method, self.model_id, snap.root, snap.datanet_id, self.question, self.text, records
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
        adapter: A registered engine adapter (``engine.add_adapter``) to answer with;
            None for the base model (or the adapter named in ``params``).
        model: The served base model's name (reports name the model by it when the
            adapter has no manifest id, see :attr:`RagAnswer.model_id`).

    Raises:
        AttributionInputError: An empty question, an adapter that is not a name, an
            adapter that differs from ``params.adapter``, or an engine without adapters.
        AdapterNotFoundError: The adapter is not registered in the engine.
    """
    from openledger.serve import SamplingParams

    sampling = params if params is not None else SamplingParams(max_tokens=64)
    name = _adapter_name(adapter, sampling.adapter)
    adapter_id = None if name is None else _adapter_id(engine, name)
    if name is not None:
        sampling = dataclasses.replace(sampling, adapter=name)
    passages = tuple(retriever.search(question, k))
    text = engine.generate(build_messages(question, passages), sampling)[0].text.strip()
    citations = citations_of(text, passages)
    snapshot = retriever.snapshot
    return RagAnswer(question, text, passages, citations, model, snapshot, name, adapter_id)


def _adapter_name(adapter: Any, requested: Any) -> str | None:
    if adapter is None:
        adapter = requested
    elif requested is not None and requested != adapter:
        raise AttributionInputError(
            f"adapter={adapter!r} differs from params.adapter={requested!r}; give one"
        )
    if adapter is not None and (not isinstance(adapter, str) or not adapter):
        raise AttributionInputError(
            f"a RAG answer names one adapter by its registered name, got {adapter!r}"
        )
    return adapter


def _adapter_id(engine: Any, name: str) -> Hash32 | None:
    store = getattr(engine, "adapters", None)
    if store is None:
        raise AttributionInputError(
            f"the engine serves no adapters, so it cannot answer with {name!r}; start it "
            "with EngineConfig(max_adapter_slots=...) and call engine.add_adapter"
        )
    found = store.resolve(name).adapter_ids[0]
    return None if found is None else Hash32(found)


def load_scoring_model(
    base_model: str, adapter: str | os.PathLike[str] | None = None, *, device: str = "cpu"
) -> tuple[Any, Any]:
    """Return the Hugging Face model (and tokenizer) that scores an answer in ablations.

    Args:
        base_model: The engine's base model (alias, local folder or hub id).
        adapter: The folder of the adapter that answered (as given to
            ``engine.add_adapter``); None for the base model.
        device: Torch device.

    Returns:
        ``(model, tokenizer)``: the base model in float32, with the PEFT adapter on top
        when one is given, in eval mode.
    """
    from openledger.models import load_base_model

    model: Any
    model, tokenizer = load_base_model(base_model, dtype="float32", device=device)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    return model.eval(), tokenizer


def _has_lora(model: Any) -> bool:
    return any(hasattr(module, "lora_A") for module in model.modules())


@dataclass(frozen=True, slots=True)
class Ablation:
    """Context-ablation scores, one per passage.

    Attributes:
        leave_one_out: ``log p(answer | all) - log p(answer | all but i)``.
        surrogate: Weights of the sparse linear surrogate over random ablations (empty
            when ``num_ablations`` was 0).
        num_ablations: Random ablations the surrogate was fitted to.
        by_contributor: ``(contributor, log p(answer | all) - log p(answer | all but that
            contributor's passages))`` for each contributor of the passages, in order of
            their first passage.
    """

    leave_one_out: tuple[float, ...]
    surrogate: tuple[float, ...]
    num_ablations: int
    by_contributor: tuple[tuple[Address | None, float], ...] = ()

    def contributor_scores(self, passages: Sequence[Passage]) -> tuple[float, ...]:
        """One score per passage for :meth:`RagAnswer.report`: each contributor's effect
        split evenly over their passages, so the report's contributor shares follow
        :attr:`by_contributor` (twins do not hide each other).

        Raises:
            AttributionInputError: ``passages`` are not the ones ablated.
        """
        effects = dict(self.by_contributor)
        owners = [p.contributor for p in passages]
        if len(owners) != len(self.leave_one_out) or set(owners) != set(effects):
            raise AttributionInputError("give the passages this ablation was computed over")
        return tuple(effects[owner] / owners.count(owner) for owner in owners)


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
    prompt: Callable[[str, Sequence[Passage]], list[dict[str, str]]] = build_messages,
) -> Ablation:
    """Score how much the answer depended on each passage (see the module docstring).

    Args:
        rag: The answer and its passages.
        model: The causal LM that answered (Hugging Face model; with the answer's adapter
            on top when it came through one, see :func:`load_scoring_model`).
        tokenizer: Its tokenizer (with its chat template).
        num_ablations: Random half-ablations for the surrogate (0: leave-one-out and
            leave-one-contributor-out only).
        l1: L1 penalty of the surrogate.
        seed: Seed of the ablation masks.
        prompt: The messages the answer was asked with, from the question and the kept
            passages (the default is :func:`answer`'s own, :func:`build_messages`).

    Raises:
        AttributionInputError: The answer came through an adapter and ``model`` has no
            LoRA layers (it would score another model than the one that answered).
    """
    import torch

    if rag.adapter is not None and not _has_lora(model):
        raise AttributionInputError(
            f"the answer came from adapter {rag.adapter!r} but the model has no LoRA layers; "
            "score it with load_scoring_model(base_model, adapter_folder)"
        )
    if num_ablations < 0:
        raise AttributionInputError(f"num_ablations must be 0 or more, got {num_ablations}")
    passages = list(rag.passages)

    def logp(mask: list[bool]) -> float:
        kept = [p for p, keep in zip(passages, mask, strict=True) if keep]
        return answer_logprob(model, tokenizer, prompt(rag.question, kept), rag.text)

    full = logp([True] * len(passages))
    loo = [full - logp([j != i for j in range(len(passages))]) for i in range(len(passages))]
    owners = [p.contributor for p in passages]
    by_contributor = tuple(
        (owner, full - logp([o != owner for o in owners])) for owner in dict.fromkeys(owners)
    )
    weights: list[float] = []
    if num_ablations:
        generator = torch.Generator().manual_seed(seed)
        masks = torch.rand(num_ablations, len(passages), generator=generator) < 0.5
        targets = torch.tensor([logp(m.tolist()) for m in masks], dtype=torch.float64)
        weights = lasso(masks.double(), targets, l1)
    return Ablation(tuple(loo), tuple(weights), num_ablations, by_contributor)
