"""The Llama-family decoder (Llama 2/3, Mistral, Qwen2, SmolLM) over a paged KV cache.

One class covers the family; the differences are configuration: grouped-query attention
(``num_kv_heads``), q/k/v biases (Qwen2), tied embeddings, RoPE scaling (llama3, linear),
Mistral's sliding window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from openledger.serve.batch import BatchMetadata
from openledger.serve.layers.attention import AttentionBackend, PagedAttention
from openledger.serve.layers.linear import Linear, PackedWeight
from openledger.serve.layers.norm import RMSNorm
from openledger.serve.layers.rotary import RotaryEmbedding
from openledger.serve.models.config import ModelConfig
from openledger.serve.ops import rowwise_cpu
from openledger.serve.ops.cpu_kernels import cpu_float32

__all__ = ["LlamaForCausalLM"]


class LlamaAttention(nn.Module):
    """Fused q|k|v projection, rotary embedding, paged attention, output projection."""

    def __init__(self, config: ModelConfig, rotary: RotaryEmbedding, backend: AttentionBackend):
        super().__init__()
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        q_size = config.num_heads * config.head_dim
        kv_size = config.num_kv_heads * config.head_dim
        self.qkv_proj = Linear(config.hidden_size, (q_size, kv_size, kv_size), bias=config.qkv_bias)
        self.o_proj = Linear(q_size, (config.hidden_size,), bias=config.o_bias)
        self.rotary = rotary
        self.attn = PagedAttention(
            config.num_heads,
            config.num_kv_heads,
            config.head_dim,
            sliding_window=config.sliding_window,
            backend=backend,
        )

    def forward(self, hidden: torch.Tensor, batch: BatchMetadata) -> torch.Tensor:
        """``[T, hidden]`` -> ``[T, hidden]``."""
        qkv = self.qkv_proj(hidden)
        q_size, kv_size, _ = self.qkv_proj.output_sizes
        # q and k are adjacent in the fused output: rotate all their heads in one pass
        heads = qkv[:, : q_size + kv_size].view(
            -1, self.num_heads + self.num_kv_heads, self.head_dim
        )
        q, k = self.rotary(batch.positions, heads).split((self.num_heads, self.num_kv_heads), 1)
        v = qkv[:, q_size + kv_size :].view(-1, self.num_kv_heads, self.head_dim)
        out = self.attn(q, k, v, batch)
        projected: torch.Tensor = self.o_proj(out.reshape(-1, self.num_heads * self.head_dim))
        return projected


class LlamaMLP(nn.Module):
    """``down(silu(gate(x)) * up(x))`` with gate|up fused into one projection.

    Attributes:
        use_cpu_kernels: Whether the compiled activation may run (``EngineConfig.cpu_kernels``).
    """

    use_cpu_kernels = True

    def __init__(self, config: ModelConfig):
        super().__init__()
        width = config.intermediate_size
        self.gate_up_proj = Linear(config.hidden_size, (width, width), bias=config.mlp_bias)
        self.down_proj = Linear(width, (config.hidden_size,), bias=config.mlp_bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[T, hidden]`` -> ``[T, hidden]``."""
        gate_up = self.gate_up_proj(hidden)
        if self.use_cpu_kernels and cpu_float32(gate_up):  # NOTE: silu(gate) * up in one pass
            act = rowwise_cpu.silu_mul(gate_up)
        else:
            gate, up = gate_up.chunk(2, dim=-1)
            act = F.silu(gate).mul_(up)
        down: torch.Tensor = self.down_proj(act)
        return down


class LlamaDecoderLayer(nn.Module):
    """Pre-norm attention and MLP blocks with residual connections."""

    def __init__(self, config: ModelConfig, rotary: RotaryEmbedding, backend: AttentionBackend):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config, rotary, backend)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(
        self, hidden: torch.Tensor, batch: BatchMetadata, pending: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One layer over ``hidden [T, hidden]``.

        Args:
            hidden: The residual stream (this step's own activation: updated in place).
            batch: The step's metadata.
            pending: The previous layer's MLP output, not yet added to ``hidden`` (the add
                goes with this layer's first norm); None for the first layer.

        Returns:
            ``(hidden, mlp_out)``: the stream, and this layer's MLP output still to add.
        """
        attn = self.self_attn(self.input_layernorm.add_norm(hidden, pending), batch)
        mlp_out = self.mlp(self.post_attention_layernorm.add_norm(hidden, attn))
        return hidden, mlp_out


class LlamaForCausalLM(nn.Module):
    """Embeddings, decoder layers, final norm and LM head.

    Args:
        config: The architecture.
        max_positions: Positions the rotary table covers.
        backend: Decode attention path, ``"reference"`` or ``"triton"``.
    """

    def __init__(
        self, config: ModelConfig, max_positions: int, backend: AttentionBackend = "reference"
    ):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_tokens.weight.requires_grad_(False)
        rotary = RotaryEmbedding(config.head_dim, max_positions, config.rope)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, rotary, backend) for _ in range(config.num_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self._head = PackedWeight()
        self.lm_head = None
        if not config.tie_word_embeddings:
            self.lm_head = nn.Parameter(
                torch.empty(config.vocab_size, config.hidden_size), requires_grad=False
            )

    def embed_input(
        self, input_ids: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The hidden states ``[T, hidden]`` fed to the first layer for ``input_ids [T]``.

        Args:
            input_ids: Flattened token ids.
            weight: An embedding matrix ``[vocab, hidden]`` to use instead of the model's
                (an adapter's own ``embed_tokens``); None for the model's.
        """
        table = self.embed_tokens.weight if weight is None else weight
        return F.embedding(input_ids, table)

    def forward(
        self,
        input_ids: torch.Tensor,
        batch: BatchMetadata,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states ``[T, hidden]`` of the flattened tokens ``input_ids [T]``.

        Args:
            input_ids: Flattened token ids.
            batch: The step's metadata.
            inputs_embeds: The first layer's input ``[T, hidden]`` when already embedded
                (by :meth:`embed_input`, possibly per request; the layers update it in
                place); None embeds ``input_ids``.
        """
        hidden = self.embed_input(input_ids) if inputs_embeds is None else inputs_embeds
        pending: torch.Tensor | None = None
        for layer in self.layers:
            hidden, pending = layer(hidden, batch, pending)
        return self.norm.add_norm(hidden, pending)

    def compute_logits(
        self, hidden: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits ``[N, vocab]`` of hidden states ``[N, hidden]``.

        Args:
            hidden: Final hidden states.
            weight: An LM head ``[vocab, hidden]`` to use instead of the model's (an
                adapter's own ``lm_head``); None for the model's.
        """
        if weight is not None:
            return F.linear(hidden, weight)
        head = self.embed_tokens.weight if self.lm_head is None else self.lm_head
        return self._head.linear(hidden, head, None)

    def set_cpu_paths(self, *, kernels: bool, packing: bool) -> None:
        """Let the compiled CPU kernels run (where they are built) or not, and keep packed
        copies of the float32 CPU projection weights or not, in every layer."""
        for module in self.modules():
            if isinstance(module, (RMSNorm, RotaryEmbedding, PagedAttention, LlamaMLP)):
                module.use_cpu_kernels = kernels
            elif isinstance(module, Linear):
                module.packed.configure(packing=packing, use_kernel=kernels)
        self._head.configure(packing=packing, use_kernel=kernels)

    def attention_layers(self) -> list[PagedAttention]:
        """Each layer's paged attention, in order (the runner binds their KV caches)."""
        found = [m for m in self.modules() if isinstance(m, PagedAttention)]
        return found
