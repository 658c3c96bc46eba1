"""Per-example LoRA gradients of a whole batch from one forward and one backward pass.

Every LoRA factor is a linear map ``y = x W^T`` (``lora_A``: ``u = x A^T``; ``lora_B``:
``v = u B^T``, later scaled and added to the frozen layer's output). The gradient of
example ``b``'s loss with respect to ``W`` is a sum over that example's tokens::

    dW_b = sum_t  g_bt^T  x_bt          g = dL/dy (captured on y), x: the factor's input

Forward hooks keep each factor's input and hook its output's gradient; the backward pass of
``sum_b loss_b`` (each example's mean loss over its learnt tokens, padding masked) then gives
``g`` per example, since no example's loss depends on another's activations. With a
projection (LoGra), the large side is projected *before* the outer product, so full
gradients are never formed::

    dA_b P_in^T  = g_u,b^T (x_b P_in^T)          r x k
    P_out dB_b   = (g_v,b P_out^T)^T u_b          k x r

which are exactly the values :meth:`Projector.project` gives for the per-record path
(:func:`~openledger.attribution.gradients.example_gradient`, the slow reference).
Padded positions are zeroed in ``x`` so they add nothing.

Lower-precision compute (``compute_dtype="bfloat16"``, or ``"float16"`` on a GPU) runs the
forward and backward passes under ``torch.autocast`` on the model's device; the captured
inputs and output-gradients are cast to float32 before the projection and the sum over
tokens, so only the passes themselves are rounded to the lower precision.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from openledger.attribution.gradients import LoraPair, Projector

if TYPE_CHECKING:
    import torch

__all__ = [
    "COMPUTE_DTYPES",
    "DEFAULT_BATCH_TOKENS",
    "batch_gradients",
    "iter_batch_gradients",
    "length_batches",
]

DEFAULT_BATCH_TOKENS = 1024
"""Padded tokens per forward/backward pass when building an index (memory vs speed)."""

COMPUTE_DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
"""Precisions of the forward and backward passes (``float32``: the reference)."""

Example = tuple[Sequence[int], Sequence[int]]


class _FactorCapture:
    """Per-example gradient of one LoRA factor, projected on one side when asked.

    Args:
        projected_side: ``"in"`` for ``lora_A`` (its input side is large), ``"out"`` for
            ``lora_B`` (its output side is large).
        matrix: The ``k x side`` projection of that side, or ``None`` to keep it whole.
    """

    def __init__(self, projected_side: str, matrix: torch.Tensor | None) -> None:
        self.projected_side = projected_side
        self.matrix = matrix
        self.mask: torch.Tensor | None = None
        self.inputs: torch.Tensor | None = None
        self.grad: torch.Tensor | None = None

    def forward_hook(self, module: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        import torch

        if inputs[0].dim() < 3:  # NOTE: DoRA's weight-norm pass, lora_B(lora_A(eye)): no tokens
            return
        x = _widened(inputs[0].detach())
        # NOTE: float32 here even inside an autocast pass (the captures are sums over tokens)
        with torch.autocast(x.device.type, enabled=False):
            if self.mask is not None:
                x = x * self.mask[..., None].to(x)
            if self.projected_side == "in" and self.matrix is not None:
                x = x @ self.matrix.T.to(x)
        self.inputs = x
        output.register_hook(self._backward_hook)  # type: ignore[no-untyped-call]

    def _backward_hook(self, grad: torch.Tensor) -> None:
        import torch

        grad = _widened(grad)
        if self.projected_side == "out" and self.matrix is not None:
            grad = grad @ self.matrix.T.to(grad)
        # NOTE: a factor runs once per forward; a second call would overwrite, not add.
        self.grad = torch.einsum("bto,bti->boi", grad, self.inputs)
        self.inputs = None


def _widened(values: torch.Tensor) -> torch.Tensor:
    """Half-precision values (from an autocast pass) as float32; others unchanged."""
    import torch

    return values.float() if values.dtype in (torch.bfloat16, torch.float16) else values


@contextmanager
def _captured(
    model: Any, pairs: Sequence[LoraPair], projector: Projector, mask: torch.Tensor
) -> Iterator[list[tuple[_FactorCapture, _FactorCapture]]]:
    captures, handles = [], []
    for pair in pairs:
        module = model.get_submodule(pair.name)
        a_side = _FactorCapture("in", projector.matrix(pair.a.shape[1]))
        b_side = _FactorCapture("out", projector.matrix(pair.b.shape[0]))
        factors = (module.lora_A["default"], module.lora_B["default"])
        for capture, factor in zip((a_side, b_side), factors, strict=True):
            capture.mask = mask
            handles.append(factor.register_forward_hook(capture.forward_hook))
        captures.append((a_side, b_side))
    try:
        yield captures
    finally:
        for handle in handles:
            handle.remove()


def _padded(examples: Sequence[Example], device: Any) -> tuple[torch.Tensor, ...]:
    import torch

    length = max(len(ids) for ids, _ in examples)
    ids = torch.zeros(len(examples), length, dtype=torch.long)
    labels = torch.full((len(examples), length), -100, dtype=torch.long)
    mask = torch.zeros(len(examples), length, dtype=torch.long)
    for row, (tokens, targets) in enumerate(examples):
        ids[row, : len(tokens)] = torch.tensor(list(tokens))
        labels[row, : len(targets)] = torch.tensor(list(targets))
        mask[row, : len(tokens)] = 1
    return ids.to(device), labels.to(device), mask.to(device)


def _summed_example_losses(
    model: Any, ids: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``sum_b`` (mean next-token loss of example ``b`` over its learnt tokens).

    Logits are computed only at the positions where some example learns the next token.
    """
    import torch

    targets = labels[:, 1:]
    counts = (targets != -100).sum(dim=1)
    if bool((counts == 0).any()):
        raise ValueError("an example has no learnt token after the first position")
    # NOTE: logits only where some row learns the next token (no vocab-sized rows elsewhere)
    keep = (targets != -100).any(dim=0).nonzero()[:, 0]
    out = model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=keep)
    kept = targets[:, keep]
    losses = torch.nn.functional.cross_entropy(
        out.logits.float().reshape(-1, out.logits.shape[-1]),
        kept.reshape(-1),
        ignore_index=-100,
        reduction="none",
    ).view(kept.shape)
    return (losses.sum(dim=1) / counts).sum()


def _autocast(model: Any, compute_dtype: str) -> AbstractContextManager[Any]:
    """``torch.autocast`` to ``compute_dtype`` on the model's device (nothing for float32).

    Raises:
        ValueError: An unknown ``compute_dtype``.
    """
    import torch

    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(
            f"compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {compute_dtype!r}"
        )
    if compute_dtype == "float32":
        return nullcontext()
    return torch.autocast(model.device.type, dtype=getattr(torch, compute_dtype))


def batch_gradients(
    model: Any,
    pairs: Sequence[LoraPair],
    projector: Projector,
    examples: Sequence[Example],
    compute_dtype: str = "float32",
) -> torch.Tensor:
    """Return each example's flat (projected) LoRA gradient, ``len(examples) x width``.

    One forward and one backward pass for the whole batch (right-padded); rows equal
    :func:`~openledger.attribution.gradients.example_gradient` of each example.

    Args:
        model: A PEFT model whose LoRA factors require gradients (see ``lora_pairs``).
        pairs: Its LoRA layers, in the order of the flat layout.
        projector: The per-factor projection.
        examples: ``(input_ids, labels)`` pairs (labels ``-100`` where nothing is learnt).
        compute_dtype: Precision of the forward and backward passes (one of
            :data:`COMPUTE_DTYPES`); the per-example sums are float32 in every case.

    Returns:
        float32 rows on the CPU.

    Raises:
        ValueError: If ``examples`` is empty, an example learns no token, or
            ``compute_dtype`` is unknown.
    """
    import torch

    if not examples:
        raise ValueError("no example to take gradients of")
    ids, labels, mask = _padded(examples, model.device)
    with _captured(model, pairs, projector, mask) as captures:
        with _autocast(model, compute_dtype):
            loss = _summed_example_losses(model, ids, labels, mask)
        torch.autograd.grad(loss, [p for pair in pairs for p in (pair.a, pair.b)])
    count = len(examples)
    parts = []
    for a_side, b_side in captures:
        if a_side.grad is None or b_side.grad is None:
            raise ValueError("a LoRA layer took no part in the forward pass")
        parts += [a_side.grad.reshape(count, -1), b_side.grad.reshape(count, -1)]
    return torch.cat(parts, dim=1).float().cpu()


def length_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Group indices by length so each padded batch holds at most ``max_tokens`` tokens.

    Indices are sorted by length (then index), so padding stays small; a sequence longer
    than ``max_tokens`` gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        if current and lengths[index] * (len(current) + 1) > max_tokens:
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def iter_batch_gradients(
    model: Any,
    pairs: Sequence[LoraPair],
    projector: Projector,
    examples: Sequence[Example],
    max_tokens: int = DEFAULT_BATCH_TOKENS,
    compute_dtype: str = "float32",
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield ``(indices, rows)`` batch by batch: the gradients of ``examples[indices]``."""
    for indices in length_batches([len(ids) for ids, _ in examples], max_tokens):
        batch = [examples[i] for i in indices]
        yield indices, batch_gradients(model, pairs, projector, batch, compute_dtype)
