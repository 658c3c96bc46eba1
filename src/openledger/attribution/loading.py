"""Loading adapters for gradients, swapping in checkpoints, and filling gradient matrices."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openledger.attribution.batched import (
    DEFAULT_BATCH_TOKENS,
    iter_batch_gradients,
)
from openledger.attribution.examples import IndexedExample
from openledger.attribution.gradients import Projector, lora_pairs
from openledger.attribution.storage import load_rows, new_rows, put_rows, rows_tensor
from openledger.exceptions import AttributionInputError, ManifestError

if TYPE_CHECKING:
    import torch

    from openledger.train import Adapter

__all__ = [
    "checkpoint_weights",
    "gradient_rows",
    "load_adapter",
    "open_adapter",
    "query_gradients",
]


def open_adapter(adapter: Any) -> Adapter:
    """Return an :class:`~openledger.train.Adapter` from one or from its folder (verified).

    Raises:
        AttributionInputError: If it is neither, or the folder is not a valid adapter.
    """
    from openledger.train import Adapter

    if isinstance(adapter, Adapter):
        return adapter
    if not isinstance(adapter, (str, os.PathLike)):
        raise AttributionInputError(
            f"adapter must be an openledger.train.Adapter or its folder, got {type(adapter)}"
        )
    try:
        return Adapter.open(adapter)
    except ManifestError as exc:
        raise AttributionInputError(f"cannot attribute with {adapter}: {exc}") from None


def load_adapter(adapter: Adapter, device: str | None) -> tuple[Any, Any]:
    """Load the base model with the adapter in float32, eval mode, only LoRA trainable."""
    model, tokenizer = adapter.load(dtype="float32", device=device or "cpu")
    lora_pairs(model)
    return model, tokenizer


@contextmanager
def _swapped(model: Any, folder: Path) -> Iterator[None]:
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise AttributionInputError(f"checkpoint {folder} has no adapter_model.safetensors")
    final = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
    set_peft_model_state_dict(model, load_file(str(weights)))
    try:
        yield
    finally:
        set_peft_model_state_dict(model, final)


def checkpoint_weights(
    model: Any, checkpoints: Sequence[str | os.PathLike[str]]
) -> list[AbstractContextManager[None]]:
    """Return one context per checkpoint that holds its weights in ``model`` while open.

    Without checkpoints: one context keeping the final weights.
    """
    if not checkpoints:
        return [nullcontext()]
    return [_swapped(model, Path(c)) for c in checkpoints]


def _bar(total: int, progress: bool | None) -> Any:
    show = sys.stderr.isatty() if progress is None else progress
    if not show:
        return None
    tqdm = importlib.import_module("tqdm.auto").tqdm
    return tqdm(total=total, unit="record", desc="influence index")


def gradient_rows(
    model: Any,
    projector: Projector,
    examples: list[IndexedExample],
    width: int,
    target: Path | None,
    progress: bool | None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    *,
    compute_dtype: str = "float32",
    storage_dtype: str = "float32",
) -> torch.Tensor:
    """Return an ``n x width`` matrix of per-example gradients in ``storage_dtype``.

    Examples are grouped by length into batches of at most ``batch_tokens`` padded tokens,
    one forward and backward pass each (:mod:`.batched`, in ``compute_dtype``). With
    ``target`` the rows are written to a memory-mapped ``.npy`` file batch by batch (so the
    matrix never has to fit in memory twice) and the returned tensor maps that file
    (:mod:`.storage`).
    """
    import numpy as np

    rows = new_rows(target, (len(examples), width), storage_dtype)
    pairs, bar = lora_pairs(model), _bar(len(examples), progress)
    tokens = [(e.input_ids, e.labels) for e in examples]
    for indices, block in iter_batch_gradients(
        model, pairs, projector, tokens, batch_tokens, compute_dtype
    ):
        put_rows(rows, np.asarray(indices), block, storage_dtype)
        if bar is not None:
            bar.update(len(indices))
    if bar is not None:
        bar.close()
    if target is not None:
        rows.flush()
        del rows
        return load_rows(target, storage_dtype)
    return rows_tensor(rows, storage_dtype)


def query_gradients(
    model: Any,
    projector: Projector,
    queries: Sequence[tuple[list[int], list[int]]],
    checkpoints: Sequence[str | os.PathLike[str]],
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    compute_dtype: str = "float32",
) -> list[torch.Tensor]:
    """Return the queries' float32 gradient rows ``[Q, D]`` under each checkpoint (the
    final weights without any), in batches of at most ``batch_tokens`` padded tokens (one
    forward and backward pass each in ``compute_dtype``, :mod:`.batched`)."""
    import torch

    pairs = lora_pairs(model)
    found = []
    for weights in checkpoint_weights(model, checkpoints):
        with weights:
            rows: dict[int, torch.Tensor] = {}
            for indices, block in iter_batch_gradients(
                model, pairs, projector, list(queries), batch_tokens, compute_dtype
            ):
                rows.update(zip(indices, block, strict=True))
            found.append(torch.stack([rows[i] for i in range(len(queries))]))
    return found
