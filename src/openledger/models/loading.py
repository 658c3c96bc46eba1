"""Load a base model and its tokenizer from any name :func:`resolve_model` accepts."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from openledger.exceptions import ConfigError, ModelNotAvailableError
from openledger.models.resolve import resolve_model

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["load_base_model", "parse_device", "parse_dtype"]

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


def parse_device(device: str | torch.device | None) -> torch.device:
    """Normalise a device argument; ``None`` means CUDA when available, else CPU.

    Raises:
        ConfigError: If the string is no device torch knows, or CUDA is asked for but absent.
    """
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {device!r} is not a torch device ({exc})") from exc
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA device")
    return parsed


def parse_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Normalise a dtype argument; ``None`` means float32 on CPU and bfloat16 on CUDA.

    Raises:
        ConfigError: If the dtype is not one of float32, float16, bfloat16.
    """
    import torch

    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    else:
        name = _DTYPES.get(str(dtype).lower(), "")
    if name not in {"float32", "float16", "bfloat16"}:
        raise ConfigError(f"dtype {dtype!r} is not supported; use float32, float16 or bfloat16")
    return getattr(torch, name)  # type: ignore[no-any-return]


def load_base_model(
    name_or_path: str | os.PathLike[str],
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal language model and its tokenizer, ready for inference.

    Args:
        name_or_path: A local Hugging Face folder, an offline alias such as
            ``"smollm2-135m-instruct"``, or a hub id ``"org/name[@revision]"``.
        dtype: ``"float32"``, ``"float16"``, ``"bfloat16"`` (or a ``torch.dtype``);
            default float32 on CPU, bfloat16 on CUDA.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default CUDA when available.

    Returns:
        ``(model, tokenizer)``: the model in eval mode on ``device``, and a tokenizer with
        a pad token set (the EOS token when the model defines none).

    Raises:
        UnknownModelError: The name is not a folder, alias or hub id.
        ModelNotAvailableError: The files cannot be had here, or are not a causal LM.
        ConfigError: ``dtype`` or ``device`` is invalid.

    Example:
        >>> model, tokenizer = load_base_model("smollm2-135m-instruct")  # doctest: +SKIP
    """
    target = parse_device(device)
    torch_dtype = parse_dtype(dtype, target)
    source = resolve_model(name_or_path)
    model, tokenizer = _from_folder(str(source.path), torch_dtype)
    model.to(target)
    model.eval()
    model.config.name_or_path = source.name
    return model, tokenizer


def _from_folder(folder: str, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, use_safetensors=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelNotAvailableError(f"could not load a causal LM from {folder}: {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
