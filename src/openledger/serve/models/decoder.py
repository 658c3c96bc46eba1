"""The decoder every served family runs on, over a paged KV cache.

One definition, parameterised by :class:`~openledger.serve.models.config.ModelConfig`:

==================  =========================================================================
Llama, Mistral      pre-norm blocks, SwiGLU MLP, grouped-query attention, RoPE (linear,
                    llama3 scaling), Mistral's sliding window, Qwen2's q/k/v biases
Qwen3               an RMSNorm over each query and key head before RoPE (``qk_norm``)
Gemma 2             ``(1 + w)`` RMSNorms, norms after attention and around the MLP
                    (``sandwich_norms``), GeGLU (tanh GELU), embeddings times
                    ``sqrt(hidden)``, ``query_pre_attn_scalar`` softmax scale, attention
                    and final logit soft-capping, alternating sliding-window layers
Gemma 3 (text)      Gemma 2's layout without soft-capping, plus q/k norms and a separate
                    RoPE base for the sliding-window layers (``local_rope``)
Phi-3 / Phi-3.5     LongRoPE; fused ``qkv_proj`` / ``gate_up_proj`` checkpoints (the
                    loader splits them into the same fused layout as everyone's)
==================  =========================================================================

Every model has q|k|v and gate|up fused into one :class:`~openledger.serve.layers.linear.
Linear` each (the projections LoRA adapters apply to, slice by slice).

Built from a rank's :class:`~openledger.serve.parallel.sharding.ShardedModelConfig`, the
model is that rank's share of a tensor-parallel split: its heads and MLP columns, one
all-reduce after each row-parallel projection (o, down), and its vocabulary rows of the LM
head, whose logits are gathered to rank 0 (:mod:`openledger.serve.parallel`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from openledger.serve.batch import BatchMetadata
from openledger.serve.layers.attention import AttentionBackend, PagedAttention
from openledger.serve.layers.linear import Linear, PackedWeight
from openledger.serve.layers.norm import RMSNorm
from openledger.serve.layers.quant import Compute, Quantization, QuantizedWeight
from openledger.serve.layers.rotary import RotaryEmbedding
from openledger.serve.models.config import ModelConfig, RopeConfig
from openledger.serve.ops import rowwise_cpu
from openledger.serve.ops.cpu_kernels import cpu_float32
from openledger.serve.parallel.collectives import all_reduce_sum, gather_columns
from openledger.serve.parallel.sharding import shard_rows, tensor_parallel_of

__all__ = ["DecoderForCausalLM"]


class Attention(nn.Module):
    """Fused q|k|v projection, optional per-head q/k norms, rotary embedding, paged
    attention (this layer's window, scale and soft-capping), output projection."""

    def __init__(
        self, config: ModelConfig, layer: int, rotary: RotaryEmbedding, backend: AttentionBackend
    ):
        super().__init__()
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.reduce = tensor_parallel_of(config)[1] > 1
        q_size = config.num_heads * config.head_dim
        kv_size = config.num_kv_heads * config.head_dim
        self.qkv_proj = Linear(config.hidden_size, (q_size, kv_size, kv_size), bias=config.qkv_bias)
        self.o_proj = Linear(q_size, (config.hidden_size,), bias=config.o_bias)
        self.q_norm: RMSNorm | None = None
        self.k_norm: RMSNorm | None = None
        if config.qk_norm:
            self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps, offset=config.norm_offset)
            self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps, offset=config.norm_offset)
        self.rotary = rotary
        self.attn = PagedAttention(
            config.num_heads,
            config.num_kv_heads,
            config.head_dim,
            sliding_window=config.window(layer),
            backend=backend,
            scale=config.attn_scale,
            softcap=config.attn_softcap,
        )

    def forward(self, hidden: torch.Tensor, batch: BatchMetadata) -> torch.Tensor:
        """``[T, hidden]`` -> ``[T, hidden]``."""
        qkv = self.qkv_proj(hidden)
        q_size, kv_size, _ = self.qkv_proj.output_sizes
        heads = qkv[:, : q_size + kv_size]
        if self.q_norm is not None and self.k_norm is not None:
            q = self.q_norm(heads[:, :q_size].reshape(-1, self.head_dim))
            k = self.k_norm(heads[:, q_size:].reshape(-1, self.head_dim))
            heads = torch.cat((q.view(-1, q_size), k.view(-1, kv_size)), dim=1)
        # q and k are adjacent: rotate all their heads in one pass
        heads = heads.view(-1, self.num_heads + self.num_kv_heads, self.head_dim)
        positions = self.rotary.table_positions(batch)
        q, k = self.rotary(positions, heads).split((self.num_heads, self.num_kv_heads), 1)
        v = qkv[:, q_size + kv_size :].view(-1, self.num_kv_heads, self.head_dim)
        out = self.attn(q, k, v, batch)
        projected: torch.Tensor = self.o_proj(out.reshape(-1, self.num_heads * self.head_dim))
        return all_reduce_sum(projected) if self.reduce else projected


class GatedMLP(nn.Module):
    """``down(act(gate(x)) * up(x))`` with gate|up fused into one projection; ``act`` is
    SiLU (SwiGLU) or tanh-approximated GELU (GeGLU, Gemma).

    Attributes:
        use_cpu_kernels: Whether the compiled activation may run (``EngineConfig.cpu_kernels``;
            SiLU only).
    """

    use_cpu_kernels = True

    def __init__(self, config: ModelConfig):
        super().__init__()
        width = config.intermediate_size
        self.gelu = config.hidden_act == "gelu_pytorch_tanh"
        self.reduce = tensor_parallel_of(config)[1] > 1
        self.gate_up_proj = Linear(config.hidden_size, (width, width), bias=config.mlp_bias)
        self.down_proj = Linear(width, (config.hidden_size,), bias=config.mlp_bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[T, hidden]`` -> ``[T, hidden]``."""
        gate_up = self.gate_up_proj(hidden)
        if not self.gelu and self.use_cpu_kernels and cpu_float32(gate_up):
            act = rowwise_cpu.silu_mul(gate_up)  # NOTE: silu(gate) * up in one pass
        else:
            gate, up = gate_up.chunk(2, dim=-1)
            gated = F.gelu(gate, approximate="tanh") if self.gelu else F.silu(gate)
            act = gated.mul_(up)
        down: torch.Tensor = self.down_proj(act)
        return all_reduce_sum(down) if self.reduce else down


class DecoderLayer(nn.Module):
    """Attention and MLP blocks with residual connections: pre-norms (Llama), or with
    ``sandwich_norms`` also norms of each block's output (Gemma 2 and 3; their
    ``post_attention_layernorm`` norms the attention output and ``pre_feedforward_layernorm``
    the MLP input)."""

    def __init__(
        self, config: ModelConfig, layer: int, rotary: RotaryEmbedding, backend: AttentionBackend
    ):
        super().__init__()
        size, eps, offset = config.hidden_size, config.rms_norm_eps, config.norm_offset
        self.input_layernorm = RMSNorm(size, eps, offset=offset)
        self.self_attn = Attention(config, layer, rotary, backend)
        self.post_attention_layernorm = RMSNorm(size, eps, offset=offset)
        self.pre_feedforward_layernorm: RMSNorm | None = None
        self.post_feedforward_layernorm: RMSNorm | None = None
        if config.sandwich_norms:
            self.pre_feedforward_layernorm = RMSNorm(size, eps, offset=offset)
            self.post_feedforward_layernorm = RMSNorm(size, eps, offset=offset)
        self.mlp = GatedMLP(config)

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
        if self.pre_feedforward_layernorm is None or self.post_feedforward_layernorm is None:
            return hidden, self.mlp(self.post_attention_layernorm.add_norm(hidden, attn))
        attn = self.post_attention_layernorm(attn)
        mlp_out = self.mlp(self.pre_feedforward_layernorm.add_norm(hidden, attn))
        return hidden, self.post_feedforward_layernorm(mlp_out)


class DecoderForCausalLM(nn.Module):
    """Embeddings, decoder layers, final norm and LM head, for every served family.

    Args:
        config: The architecture.
        max_positions: Positions the rotary tables cover.
        backend: Decode attention path, ``"reference"`` or ``"triton"``.
    """

    def __init__(
        self, config: ModelConfig, max_positions: int, backend: AttentionBackend = "reference"
    ):
        super().__init__()
        self.config = config
        self.tp_rank, self.tp_size = tensor_parallel_of(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_tokens.weight.requires_grad_(False)
        rotaries: dict[RopeConfig, RotaryEmbedding] = {}
        for layer in range(config.num_layers):
            rope = config.rope_of(layer)
            if rope not in rotaries:
                rotaries[rope] = RotaryEmbedding(config.head_dim, max_positions, rope)
        self.layers = nn.ModuleList(
            DecoderLayer(config, i, rotaries[config.rope_of(i)], backend)
            for i in range(config.num_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, offset=config.norm_offset)
        self._head = PackedWeight()
        self.lm_head = None
        if not config.tie_word_embeddings:
            self.lm_head = nn.Parameter(  # NOTE: this rank's vocabulary rows
                torch.empty(config.vocab_size // self.tp_size, config.hidden_size),
                requires_grad=False,
            )

    def embed_input(
        self, input_ids: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The hidden states ``[T, hidden]`` fed to the first layer for ``input_ids [T]``
        (Gemma: the embeddings times ``sqrt(hidden_size)`` rounded to their dtype, as
        transformers does).

        Args:
            input_ids: Flattened token ids.
            weight: An embedding matrix ``[vocab, hidden]`` to use instead of the model's
                (an adapter's own ``embed_tokens``); None for the model's.
        """
        table = self.embed_tokens.weight if weight is None else weight
        hidden = F.embedding(input_ids, table)
        if self.config.embed_scale is not None:
            hidden = hidden * torch.tensor(self.config.embed_scale, dtype=table.dtype)
        return hidden

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
        """Logits ``[N, vocab]`` of hidden states ``[N, hidden]``, soft-capped when the
        model caps them (Gemma 2: ``cap * tanh(logits / cap)``).

        Split over tensor-parallel ranks, each rank computes its vocabulary rows and rank 0
        gets all of them; the other ranks get their ``[N, vocab / size]`` share.

        Args:
            hidden: Final hidden states.
            weight: An LM head ``[vocab, hidden]`` to use instead of the model's (an
                adapter's own ``lm_head``; split, this rank's rows); None for the model's.
        """
        if weight is not None:
            logits = F.linear(hidden, weight)
        else:
            head = self.embed_tokens.weight if self.lm_head is None else self.lm_head
            if self.lm_head is None and self.tp_size > 1:  # tied: this rank's rows
                head = shard_rows(head, self.tp_rank, self.tp_size)
            logits = self._head.linear(hidden, head, None)
        cap = self.config.final_softcap
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return gather_columns(logits, self.tp_size) if self.tp_size > 1 else logits

    def set_cpu_paths(self, *, kernels: bool, packing: bool) -> None:
        """Let the compiled CPU kernels run (where they are built) or not, and keep packed
        copies of the float32 CPU projection weights or not, in every layer."""
        for module in self.modules():
            if isinstance(module, (RMSNorm, RotaryEmbedding, PagedAttention, GatedMLP)):
                module.use_cpu_kernels = kernels
            elif isinstance(module, Linear):
                module.packed.configure(packing=packing, use_kernel=kernels)
        self._head.configure(packing=packing, use_kernel=kernels)

    def quantize_head(self, scheme: Quantization, *, compute: Compute = "float32") -> int:
        """Compute the logits with the LM head quantised (``"int8"`` or ``"fp8"``, see
        :mod:`~openledger.serve.layers.quant`); an untied head's full-precision weight is
        freed, a tied one stays (the embedding lookup reads it). Returns the bytes of the
        quantised head.

        Raises:
            ValueError: An unknown scheme, or a head split over tensor-parallel ranks.
        """
        if self.tp_size > 1:
            raise ValueError("a quantised LM head is not split over tensor-parallel ranks")
        head = self.embed_tokens.weight if self.lm_head is None else self.lm_head
        self._head.quantize(head, scheme, compute=compute)
        if self.lm_head is not None:
            self.lm_head = nn.Parameter(head.data.new_empty(0, head.shape[1]), requires_grad=False)
        return self.quantized_head.nbytes if self.quantized_head is not None else 0

    @property
    def quantized_head(self) -> QuantizedWeight | None:
        """The LM head the logits are computed with, when quantised (else None)."""
        return self._head.quantized

    def attention_layers(self) -> list[PagedAttention]:
        """Each layer's paged attention, in order (the runner binds their KV caches)."""
        found = [m for m in self.modules() if isinstance(m, PagedAttention)]
        return found
