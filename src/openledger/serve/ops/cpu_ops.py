"""The compiled CPU kernels as registered torch ops: ``torch.ops.openledger.*``.

Each kernel of :mod:`.cpu_kernels` is an operator of the ``openledger`` namespace with a
schema, a fake implementation (shapes only, for fake tensors and ``torch.compile``
tracing) and a CPU implementation that calls the compiled library. Both implementations
run the op's one check of shapes, dtypes and strides (its ``check``, see :func:`define`),
so a trace refuses what the kernel would refuse; the indices a kernel follows (block ids,
positions, token rows) the C code checks itself, on every call, before it reads or writes.
torch's profiler records every call under the op's name::

    linear(Tensor x, Tensor packed, int out_features, Tensor? bias) -> Tensor
    pack_linear(Tensor weight) -> Tensor
    lora_apply(Tensor(a!) out, Tensor x, Tensor row_offsets, Tensor rows, Tensor[] weights,
               Tensor groups, Tensor slices) -> ()
    paged_decode(Tensor query, Tensor k_cache, Tensor v_cache, Tensor block_tables,
                 Tensor context_lens, float scale, int sliding_window) -> Tensor
    rms_norm(Tensor x, Tensor weight, float eps) -> Tensor
    add_rms_norm(Tensor(a!) hidden, Tensor delta, Tensor weight, float eps) -> Tensor
    silu_mul(Tensor gate_up) -> Tensor
    rotary(Tensor heads, Tensor cos_sin, Tensor positions) -> Tensor
    argmax_rows(Tensor x) -> Tensor

Each family of kernels defines its ops beside its C source: :mod:`.linear_cpu`
(``csrc/linear.c``), :mod:`.lora_cpu` (``csrc/lora.c``), :mod:`.attention_cpu`
(``csrc/attention.c``), :mod:`.rowwise_cpu` (``csrc/rowwise.c``); this module holds what
they share. :func:`load_ops` imports them all.

NOTE: registered with ``torch.library.Library`` (define, impl, register_fake), not
``torch.library.custom_op``, whose Python wrappers around each call cost more than some of
these kernels take (docs/serve.md, "CPU kernels"). The ops are inference kernels: they
have no autograd formula.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

import torch

from openledger.serve.ops.cpu_kernels import CpuKernels, cpu_kernels

__all__ = [
    "INT8_OP_NAMES",
    "LIBRARY",
    "OP_NAMES",
    "CheckedOnce",
    "check_contiguous",
    "check_rows",
    "define",
    "library_or_raise",
    "load_ops",
]

LIBRARY = torch.library.Library("openledger", "FRAGMENT")  # type: ignore[no-untyped-call]
"""The ``openledger`` op namespace (kept alive for the process: the ops live with it)."""

F32 = torch.float32
OP_NAMES = (
    "linear",
    "pack_linear",
    "lora_apply",
    "paged_decode",
    "rms_norm",
    "add_rms_norm",
    "silu_mul",
    "rotary",
    "argmax_rows",
    "linear_int8",
    "pack_linear_int8",
    "linear_int8_bf16",
    "pack_linear_int8_bf16",
)
"""Every op of the namespace (``torch.ops.openledger.<name>``)."""
INT8_OP_NAMES = ("linear_int8", "pack_linear_int8", "linear_int8_bf16", "pack_linear_int8_bf16")
"""The ops of :data:`OP_NAMES` only an int8-quantised engine runs
(``EngineConfig(quantization="int8")``; the ``_bf16`` ones with
``quantized_compute="bfloat16"`` on a CPU with AVX512-BF16)."""


def load_ops() -> None:
    """Import every family's module, so that every op of :data:`OP_NAMES` is registered."""
    from openledger.serve.ops import attention_cpu, linear_cpu, lora_cpu, rowwise_cpu

    del attention_cpu, linear_cpu, lora_cpu, rowwise_cpu


_Facts = TypeVar("_Facts")


class CheckedOnce(Generic[_Facts]):
    """What an op made of a tensor after checking it (a LoRA table's addresses), kept while
    that tensor lives: a table is read by hundreds of calls, and checking it once is enough.

    NOTE: by identity, cheaper than :class:`torch.utils.weak.WeakIdKeyDictionary` on the
    hot path; an entry goes when its tensor does. A tensor written in place after its
    first call keeps its old facts (the LoRA backend builds a new table when its adapters
    change); what the facts point into is held with them, so they stay safe to follow.
    """

    def __init__(self) -> None:
        self._found: dict[int, tuple[weakref.ref[torch.Tensor], _Facts]] = {}

    def get(self, tensor: torch.Tensor) -> _Facts | None:
        """The facts kept for ``tensor``, or None."""
        found = self._found.get(id(tensor))
        return found[1] if found is not None and found[0]() is tensor else None

    def put(self, tensor: torch.Tensor, facts: _Facts) -> None:
        """Keep ``facts`` for ``tensor`` while it lives."""
        key = id(tensor)

        def forget(_: weakref.ref[torch.Tensor]) -> None:
            self._found.pop(key, None)

        self._found[key] = (weakref.ref(tensor, forget), facts)


def library_or_raise() -> CpuKernels:
    """The loaded kernels.

    Raises:
        RuntimeError: They are not built here (no C compiler, Windows).
    """
    kernels = cpu_kernels()
    if kernels is None:
        raise RuntimeError("the CPU kernels are not built here (see openledger.serve.ops)")
    return kernels


def check_rows(name: str, t: torch.Tensor, *, dim: int = 2) -> None:
    """Refuse ``t`` unless it is a float32 CPU tensor of ``dim`` dimensions with unit
    stride along its last (rows the kernels read with their own row stride).

    Raises:
        ValueError: Naming ``name``, the dtype, device, shape and strides found.
    """
    if not (t.dtype is F32 and t.is_cpu and t.dim() == dim and t.stride(-1) == 1):
        raise ValueError(
            f"{name}: the CPU kernels need a float32 CPU tensor of {dim} dimensions with unit "
            f"stride along its rows, got {t.dtype} {t.device} shape {tuple(t.shape)} "
            f"strides {t.stride()}"
        )


def check_contiguous(name: str, t: torch.Tensor, dtype: torch.dtype = F32) -> None:
    """Refuse ``t`` unless it is a contiguous CPU tensor of ``dtype``.

    Raises:
        ValueError: Naming ``name`` and what was found.
    """
    if not (t.dtype is dtype and t.is_cpu and t.is_contiguous()):
        raise ValueError(
            f"{name}: a contiguous {dtype} CPU tensor expected, got {t.dtype} {t.device} "
            f"shape {tuple(t.shape)} strides {t.stride()}"
        )


def define(
    schema: str,
    cpu: Callable[..., object],
    *,
    check: Callable[..., None],
    out: Callable[..., object],
) -> None:
    """Define ``openledger::<schema>``: ``cpu`` runs it (and checks its tensors itself);
    the fake implementation runs ``check`` on the same arguments and returns ``out`` of
    them (empty tensors of the result's shapes)."""
    name = schema.split("(", 1)[0]

    def fake(*args: object) -> object:
        check(*args)
        return out(*args)

    LIBRARY.define(schema)  # type: ignore[no-untyped-call]
    LIBRARY.impl(name, cpu, "CPU")  # type: ignore[no-untyped-call]
    torch.library.register_fake(f"openledger::{name}", fake, lib=LIBRARY)
