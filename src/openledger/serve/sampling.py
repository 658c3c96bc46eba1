"""Turn a batch of logits into next tokens: penalties, temperature, top-k/p, seeded draws."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from openledger.serve.ops.rowwise_cpu import argmax_rows
from openledger.serve.params import SamplingParams

__all__ = [
    "SampledTokens",
    "apply_repetition_penalty",
    "next_token_probs",
    "request_generator",
    "sample",
]

_SEED_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads (seed, step) pairs apart


@dataclass(slots=True)
class SampledTokens:
    """Next tokens of a batch.

    Attributes:
        token_ids: One token per row.
        logprobs: Per row, None or ``{token_id: logprob}`` holding the chosen token and the
            ``params.logprobs`` most likely ones, from the model's raw distribution.
    """

    token_ids: list[int]
    logprobs: list[dict[int, float] | None]


def apply_repetition_penalty(logits: torch.Tensor, seen: list[int], penalty: float) -> torch.Tensor:
    """Penalise ``seen`` tokens in a ``[vocab]`` row: positive / penalty, negative * penalty."""
    if penalty == 1.0 or not seen:
        return logits
    index = torch.tensor(sorted(set(seen)), dtype=torch.long, device=logits.device)
    picked = logits[index]
    logits = logits.clone()
    logits[index] = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits


def next_token_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Sampling distribution ``[vocab]`` of one (penalised) row: temperature, top-k, top-p."""
    scaled = logits.float() / params.temperature
    if 0 < params.top_k < scaled.numel():
        kth = torch.topk(scaled, params.top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        drop = torch.zeros_like(probs, dtype=torch.bool)
        drop[order] = mass_before >= params.top_p
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum()
    return probs


def request_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """A generator for draw ``step`` of a seeded request: independent of batch and order."""
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * _SEED_MIX + step) % (1 << 63))
    return generator


def sample(
    logits: torch.Tensor,
    params: list[SamplingParams],
    histories: list[list[int]],
    steps: list[int],
    generator: torch.Generator | None = None,
    banned: list[frozenset[int]] | None = None,
    *,
    use_kernel: bool = True,
) -> SampledTokens:
    """Pick the next token of every row.

    Args:
        logits: ``[B, vocab]``.
        params: Each row's sampling parameters.
        histories: Each row's prompt + output tokens (for the repetition penalty).
        steps: Each row's number of tokens generated so far (seeds its draw).
        generator: Stream for rows without a seed; None uses torch's global one.
        banned: Per row, tokens that must not be chosen now (EOS before ``min_tokens``).
        use_kernel: Greedy picks may use the compiled CPU kernel (``EngineConfig.cpu_kernels``).

    Returns:
        The chosen tokens and, where asked for, log-probabilities.
    """
    logits = logits.float()
    banned = banned or [frozenset()] * len(params)
    token_ids = [0] * len(params)
    # Greedy rows without a repetition penalty: one argmax for all of them, bans applied
    # as -inf (EOS before min_tokens); the rest one row at a time.
    plain = [row for row, p in enumerate(params) if p.greedy and p.repetition_penalty == 1.0]
    if plain:
        rows = logits if len(plain) == len(params) else logits[plain]
        bans = [(i, token) for i, row in enumerate(plain) for token in sorted(banned[row])]
        saved = None
        if bans:
            # NOTE: masked in place and restored after the pick (the log-probabilities
            # read the logits), instead of copying all of them
            device = rows.device
            at = (
                torch.tensor([r for r, _ in bans], device=device),
                torch.tensor([t for _, t in bans], device=device),
            )
            saved = rows[at]
            rows[at] = float("-inf")
        picked = argmax_rows(rows, use_kernel=use_kernel)
        if saved is not None:
            rows[at] = saved
        for row, token in zip(plain, picked, strict=True):
            token_ids[row] = token
    done = set(plain)
    for row, row_params in enumerate(params):
        if row in done:
            continue
        penalised = apply_repetition_penalty(
            logits[row], histories[row], row_params.repetition_penalty
        )
        if banned[row]:
            index = _index(banned[row], logits.device)
            penalised = penalised.index_fill(0, index, float("-inf"))
        token_ids[row] = _pick(penalised, row_params, steps[row], generator)
    return SampledTokens(token_ids, _logprobs(logits, params, token_ids))


def _index(tokens: frozenset[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(sorted(tokens), dtype=torch.long, device=device)


def _pick(
    logits: torch.Tensor, params: SamplingParams, step: int, generator: torch.Generator | None
) -> int:
    if params.greedy:
        return int(torch.argmax(logits).item())
    probs = next_token_probs(logits, params)
    if params.seed is not None:
        generator = request_generator(params.seed, step, logits.device)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def _logprobs(
    logits: torch.Tensor, params: list[SamplingParams], token_ids: list[int]
) -> list[dict[int, float] | None]:
    wanted = [p.logprobs for p in params]
    if all(n is None for n in wanted):
        return [None] * len(params)
    logprobs = torch.log_softmax(logits, dim=-1)
    result: list[dict[int, float] | None] = []
    for row, num in enumerate(wanted):
        if num is None:
            result.append(None)
            continue
        entry = {token_ids[row]: float(logprobs[row, token_ids[row]])}
        if num > 0:
            top = torch.topk(logprobs[row], num)
            entry.update(zip(top.indices.tolist(), top.values.tolist(), strict=False))
        result.append(entry)
    return result
