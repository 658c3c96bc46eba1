"""Packing, padding and the dataset the trainer reads.

A batch carries, next to the model inputs, a ``record_ids`` tensor ``[batch, k]``: the
indices of the source records in each row, padded with ``-1``. The trainer takes it out
before the forward pass and writes it to the training log (see :mod:`.provenance`).

Packed rows carry ``position_ids`` that restart at 0 for each example and no
``attention_mask``; transformers then builds a block-diagonal causal mask, so packed
examples do not attend to each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from openledger.train.formatting import IGNORE_INDEX, Example

if TYPE_CHECKING:
    import torch

__all__ = ["ExampleDataset", "collate", "pack_examples"]


def pack_examples(examples: Sequence[Example], max_length: int) -> list[Example]:
    """Greedily pack whole examples, in order, into rows of at most ``max_length`` tokens.

    An example is never split; one that does not fit the current row starts a new one.
    """
    rows: list[list[Example]] = []
    used = max_length + 1
    for example in examples:
        if used + len(example) > max_length:
            rows.append([])
            used = 0
        rows[-1].append(example)
        used += len(example)
    return [_concat(row) for row in rows]


def _concat(row: list[Example]) -> Example:
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for example in row:
        ids.extend(example.input_ids)
        labels.extend(example.labels)
        positions.extend(range(len(example)))
    records = tuple(i for example in row for i in example.records)
    return Example(tuple(ids), tuple(labels), records, tuple(positions))


class ExampleDataset:
    """A map-style dataset of :class:`Example` s (what ``torch.utils.data`` needs)."""

    def __init__(self, examples: Sequence[Example]) -> None:
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Example:
        return self.examples[index]


def collate(examples: Sequence[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad examples into a batch of tensors.

    Returns:
        ``input_ids``, ``labels``, ``record_ids``, ``num_tokens`` (real tokens per row), and
        either ``attention_mask`` or, when the examples are packed, ``position_ids``
        (padding then forms its own short sequence).
    """
    import torch

    width = max(len(e) for e in examples)
    depth = max(len(e.records) for e in examples)
    batch: dict[str, Any] = {
        "input_ids": [_pad(e.input_ids, width, pad_token_id) for e in examples],
        "labels": [_pad(e.labels, width, IGNORE_INDEX) for e in examples],
        "record_ids": [_pad(e.records, depth, -1) for e in examples],
        "num_tokens": [len(e) for e in examples],
    }
    if any(e.position_ids is not None for e in examples):
        batch["position_ids"] = [_positions(e, width) for e in examples]
    else:
        batch["attention_mask"] = [_pad((1,) * len(e), width, 0) for e in examples]
    return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}


def _pad(values: Sequence[int], width: int, fill: int) -> list[int]:
    return [*values, *([fill] * (width - len(values)))]


def _positions(example: Example, width: int) -> list[int]:
    own = list(example.position_ids or range(len(example)))
    return own + list(range(width - len(own)))
