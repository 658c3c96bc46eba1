"""``evaluate``: loss and perplexity, exact match and ROUGE-L, base vs adapter side by side.

Loss is the mean cross-entropy over learnt tokens (the same loss mask as training),
computed with the adapter and with it disabled (the base model). Generation metrics use
records whose last message is the assistant's: the conversation before it is the prompt,
its content the reference, answers are greedy. Exact match compares answers stripped and
case-folded; ROUGE-L is the F1 of the longest common subsequence of lower-cased
whitespace tokens.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from openledger.train.batching import collate
from openledger.train.export import Adapter
from openledger.train.formatting import format_records, record_messages
from openledger.train.sources import load_training_data

if TYPE_CHECKING:
    import torch

    from openledger.data import AccessGrant
    from openledger.train.finetune import TrainingRun

__all__ = ["EvalReport", "Sample", "evaluate", "rouge_l"]


@dataclass(frozen=True, slots=True)
class Sample:
    """One prompt answered by the base model and by the adapter."""

    prompt: str
    reference: str
    base: str
    adapter: str


@dataclass(frozen=True)
class EvalReport:
    """What :func:`evaluate` measured.

    Attributes:
        loss: Adapter loss per learnt token; ``perplexity`` is its exponential.
        base_loss: The same with the adapter disabled; ``base_perplexity`` likewise.
        exact_match: Share of generated answers equal to the reference (adapter), and
            ``base_exact_match`` for the base; ``None`` without generation records.
        rouge_l: Mean ROUGE-L F1 of adapter answers, and ``base_rouge_l``.
        num_records: Records evaluated for loss; ``num_generated`` for generation.
        samples: The first few answers side by side.
    """

    loss: float
    perplexity: float
    base_loss: float
    base_perplexity: float
    exact_match: float | None
    base_exact_match: float | None
    rouge_l: float | None
    base_rouge_l: float | None
    num_records: int
    num_generated: int
    samples: list[Sample] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return the report as plain JSON values."""
        return asdict(self)

    def _repr_html_(self) -> str:
        rows = "".join(
            "<tr>"
            + "".join(
                f"<td>{html.escape(v)}</td>" for v in (s.prompt, s.reference, s.base, s.adapter)
            )
            + "</tr>"
            for s in self.samples
        )
        head = "<tr><th>prompt</th><th>reference</th><th>base</th><th>adapter</th></tr>"
        summary = (
            f"loss {self.base_loss:.4f} → {self.loss:.4f}, perplexity "
            f"{self.base_perplexity:.2f} → {self.perplexity:.2f}"
        )
        return f"<p>{summary}</p><table>{head}{rows}</table>"


def rouge_l(prediction: str, reference: str) -> float:
    """Return the ROUGE-L F1 of two texts over lower-cased whitespace tokens."""
    a, b = prediction.lower().split(), reference.lower().split()
    if not a or not b:
        return float(a == b)
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    common = previous[-1]
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(b)
    return 2 * precision * recall / (precision + recall)


def evaluate(
    adapter: Adapter | TrainingRun | str | os.PathLike[str],
    data: Any,
    *,
    grant: AccessGrant | None = None,
    max_new_tokens: int = 64,
    num_generate: int = 16,
    num_samples: int = 3,
    batch_size: int = 8,
    device: str | torch.device | None = None,
) -> EvalReport:
    """Evaluate an adapter against its base model on some records.

    Args:
        adapter: An :class:`Adapter`, an adapter folder, or a :class:`TrainingRun`
            (its in-memory model is used).
        data: Records in any form :func:`~openledger.train.sources.load_training_data` takes.
        grant: Access grant for a private datanet.
        max_new_tokens: Longest generated answer.
        num_generate: How many records to answer by generation (0 for none).
        num_samples: How many answers to keep in :attr:`EvalReport.samples`.
        batch_size: Records per forward pass for the loss.
        device: Where to run a model loaded from disk.

    Returns:
        The :class:`EvalReport`.
    """
    model, tokenizer, max_length = _model_of(adapter, device)
    records = [s.record for s in load_training_data(data, grant=grant).records]
    formatted = format_records(records, tokenizer, max_length=max_length)
    loss = _mean_loss(model, formatted.examples, tokenizer, batch_size)
    with model.disable_adapter():
        base_loss = _mean_loss(model, formatted.examples, tokenizer, batch_size)
    pairs = _prompts(records, tokenizer)[:num_generate]
    answers = [_generate(model, tokenizer, p, max_new_tokens) for p, _ in pairs]
    with model.disable_adapter():
        base_answers = [_generate(model, tokenizer, p, max_new_tokens) for p, _ in pairs]
    references = [r for _, r in pairs]
    return EvalReport(
        loss=loss,
        perplexity=math.exp(min(loss, 50.0)),
        base_loss=base_loss,
        base_perplexity=math.exp(min(base_loss, 50.0)),
        exact_match=_mean([_same(a, r) for a, r in zip(answers, references, strict=True)]),
        base_exact_match=_mean(
            [_same(a, r) for a, r in zip(base_answers, references, strict=True)]
        ),
        rouge_l=_mean([rouge_l(a, r) for a, r in zip(answers, references, strict=True)]),
        base_rouge_l=_mean([rouge_l(a, r) for a, r in zip(base_answers, references, strict=True)]),
        num_records=len(formatted.examples),
        num_generated=len(pairs),
        samples=[
            Sample(p, r, b, a)
            for (p, r), b, a in list(zip(pairs, base_answers, answers, strict=True))[:num_samples]
        ],
    )


def _model_of(adapter: Any, device: Any) -> tuple[Any, Any, int]:
    from openledger.train.finetune import TrainingRun

    if isinstance(adapter, TrainingRun):
        return adapter.model, adapter.tokenizer, adapter.adapter.recipe.max_length
    found = adapter if isinstance(adapter, Adapter) else Adapter.open(adapter)
    model, tokenizer = found.load(device=device)
    return model, tokenizer, found.recipe.max_length


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _same(answer: str, reference: str) -> float:
    return float(answer.strip().casefold() == reference.strip().casefold())


def _mean_loss(model: Any, examples: Sequence[Any], tokenizer: Any, batch_size: int) -> float:
    import torch

    total = count = 0.0
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start : start + batch_size], int(tokenizer.pad_token_id))
            labels = batch["labels"][:, 1:].to(device)
            logits = model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
            ).logits[:, :-1]
            losses = torch.nn.functional.cross_entropy(
                logits.float().transpose(1, 2), labels, reduction="sum", ignore_index=-100
            )
            total += float(losses)
            count += float((labels != -100).sum())
    return total / count if count else float("nan")


def _prompts(records: Sequence[Any], tokenizer: Any) -> list[tuple[str, str]]:
    pairs = []
    for record in records:
        messages = record_messages(record)
        if messages and messages[-1]["role"] == "assistant":
            prompt = tokenizer.apply_chat_template(
                messages[:-1], tokenize=False, add_generation_prompt=True
            )
            pairs.append((str(prompt), messages[-1]["content"]))
    return pairs


def _generate(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int) -> str:
    import torch

    device = next(model.parameters()).device
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)).strip()
