"""Fused projections: slice loading, shape checks, and the output hook adapters use."""

from __future__ import annotations

import pytest
import torch

from openledger.serve.layers.linear import Linear


def test_slices_load_into_one_fused_matmul() -> None:
    q, k = torch.randn(4, 3), torch.randn(2, 3)
    fused = Linear(3, (4, 2), bias=True)
    fused.load_slice("weight", q, 0)
    fused.load_slice("weight", k, 1)
    fused.load_slice("bias", torch.ones(2), 1)
    x = torch.randn(5, 3)
    out_q, out_k = fused(x).split(fused.output_sizes, dim=-1)
    torch.testing.assert_close(out_q, x @ q.T)
    torch.testing.assert_close(out_k, x @ k.T + 1)
    with pytest.raises(ValueError, match="slice 0"):
        fused.load_slice("weight", torch.randn(3, 3), 0)


def test_output_hook_sees_input_and_updates_output() -> None:
    class AddRowSum:
        def apply(self, out: torch.Tensor, x: torch.Tensor) -> None:
            out += x.sum(dim=-1, keepdim=True)

    linear = Linear(3, (2,))
    linear.load_slice("weight", torch.zeros(2, 3))
    linear.lora = AddRowSum()
    x = torch.arange(6.0).view(2, 3)
    torch.testing.assert_close(linear(x), torch.tensor([[3.0, 3.0], [12.0, 12.0]]))
