"""Training records and queries tokenised exactly as training saw them.

Records go through :func:`openledger.train.formatting.format_record` with the adapter's
recipe (chat template, ``max_length``); those training dropped (too long, nothing learnt)
are left out of the index. A query ``(prompt, completion)`` is formatted as an instruction
record, so its loss covers the completion (and the EOS that ends it) only; with a tokenizer
that has no chat template, the loss covers the completion's tokens after the prompt's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from openledger.data import InstructionRecord, Record, StoredRecord
from openledger.exceptions import AttributionInputError
from openledger.train.formatting import IGNORE_INDEX, format_record, record_messages

if TYPE_CHECKING:
    from openledger.train import LoraRecipe

__all__ = ["IndexedExample", "query_example", "record_text", "training_examples"]

TokenPair = tuple[list[int], list[int]]


@dataclass(frozen=True, slots=True)
class IndexedExample:
    """One training record ready for gradients.

    Attributes:
        stored: The snapshot record (hash, contributor, record).
        input_ids: Its token ids.
        labels: Its labels (``-100`` where nothing is learnt).
    """

    stored: StoredRecord
    input_ids: list[int]
    labels: list[int]


def record_text(record: Record) -> str:
    """Return a readable rendering of a record (``user: ...`` / ``assistant: ...`` lines)."""
    messages = record_messages(record)
    if messages is None:
        return str(getattr(record, "text", ""))
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _learns(labels: list[int]) -> bool:
    return any(label != IGNORE_INDEX for label in labels[1:])


def training_examples(
    records: list[StoredRecord], tokenizer: Any, recipe: LoraRecipe
) -> tuple[list[IndexedExample], int]:
    """Tokenise snapshot records as training did.

    Returns:
        The examples kept, and how many records were skipped (too long or nothing learnt).
    """
    kept: list[IndexedExample] = []
    for stored in records:
        ids, labels = format_record(stored.record, tokenizer, chat_template=recipe.chat_template)
        if len(ids) <= recipe.max_length and _learns(labels):
            kept.append(IndexedExample(stored, ids, labels))
    return kept, len(records) - len(kept)


def query_example(prompt: str, completion: str, tokenizer: Any, recipe: LoraRecipe) -> TokenPair:
    """Tokenise a query so that its loss covers the completion only.

    Raises:
        AttributionInputError: If the prompt or completion is empty or not a string.
    """
    for name, value in (("prompt", prompt), ("completion", completion)):
        if not isinstance(value, str) or not value.strip():
            raise AttributionInputError(f"{name} must be a non-empty string, got {value!r}")
    if recipe.chat_template is not None or getattr(tokenizer, "chat_template", None):
        record = InstructionRecord(instruction=prompt, response=completion)
        return format_record(record, tokenizer, chat_template=recipe.chat_template)
    head = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    tail = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    return head + tail, [IGNORE_INDEX] * len(head) + tail
