"""The engine facade: requests in, steps of continuous batching, outputs out."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from openledger.exceptions import ConfigError, InvalidRequestError
from openledger.serve.block_pool import BlockPool
from openledger.serve.config import EngineConfig
from openledger.serve.detokenizer import IncrementalDetokenizer
from openledger.serve.outputs import RequestOutput, RequestUsage
from openledger.serve.params import SamplingParams
from openledger.serve.request import PromptInput, RequestState, is_single_prompt, tokenize_prompt
from openledger.serve.scheduler import Scheduler
from openledger.serve.sequence import SequenceState

if TYPE_CHECKING:  # NOTE: the adapter store imports torch; engine.py stays importable without
    from openledger.serve.adapters import AdapterSpec, AdapterStore, AdapterUse

__all__ = ["Engine"]

logger = logging.getLogger(__name__)

AdapterChoice = str | Mapping[str, float]
"""A registered adapter's name, or a weighted mix ``{name: weight}``."""


class Engine:
    """Serves a Llama-family base model with a paged KV cache and continuous batching.

    Args:
        base_model: A local Hugging Face folder, an offline alias such as
            ``"smollm2-135m-instruct"``, or a hub id (see :func:`openledger.models.resolve_model`).
        config: Cache, batching and device settings; defaults when None.

    Raises:
        UnsupportedModelError: The checkpoint is not a Llama, Mistral or Qwen2 model.
        ConfigError: Settings that do not fit the model or the machine.

    Example:
        >>> engine = Engine("smollm2-135m-instruct")  # doctest: +SKIP
        >>> engine.generate(["The capital of France is"])[0].text  # doctest: +SKIP
    """

    def __init__(self, base_model: str | os.PathLike[str], config: EngineConfig | None = None):
        from openledger.serve.setup import build_components

        self.config = (config or EngineConfig()).with_environment()
        parts = build_components(base_model, self.config)
        self.model_config = parts.model_config
        self.tokenizer: Any = parts.tokenizer
        self.runner = parts.runner
        self.max_model_len = parts.max_model_len
        self.block_pool = BlockPool(
            parts.num_blocks,
            self.config.block_size,
            enable_prefix_caching=self.config.enable_prefix_caching,
        )
        self.scheduler = Scheduler(
            self.block_pool,
            max_num_seqs=self.config.max_num_seqs,
            max_num_batched_tokens=self.config.max_num_batched_tokens,
            enable_chunked_prefill=self.config.enable_chunked_prefill,
        )
        self._eos = frozenset(parts.eos_token_ids)
        self._requests: dict[str, RequestState] = {}
        self._by_seq: dict[int, RequestState] = {}
        self._aborted: list[RequestOutput] = []
        self._ids = itertools.count()
        self._uses: dict[int, AdapterUse] = {}
        self._merged_folders: list[tempfile.TemporaryDirectory[str]] = []
        self.adapters = self._adapter_store()

    def add_request(
        self,
        prompt: PromptInput,
        params: SamplingParams | None = None,
        request_id: str | None = None,
    ) -> str:
        """Queue a request; it joins the running batch at the next step boundary.

        Args:
            prompt: Text, chat messages or token ids.
            params: Sampling parameters; greedy, 16 tokens when None.
            request_id: Your id for it; a fresh one is assigned when None.

        Returns:
            The request id.

        Raises:
            InvalidRequestError: The prompt is empty, too long for the context or the KV
                cache, or the id is in use. Nothing else in the engine is affected.
            AdapterError: The adapter is unknown or its weights cannot be read (only this
                request is refused).
        """
        params = params or SamplingParams()
        if not isinstance(params, SamplingParams):
            raise InvalidRequestError(f"params must be SamplingParams, got {type(params).__name__}")
        number = next(self._ids)
        request_id = str(number) if request_id is None else str(request_id)
        if request_id in self._requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        use = self._adapter_use(params)
        text, token_ids = tokenize_prompt(self.tokenizer, prompt)
        seq = self._new_sequence(number, token_ids, params)
        if use is not None and self.adapters is not None:
            seq.cache_salt = use.cache_salt
            self._uses[seq.seq_id] = use
            self.adapters.retain(use)  # NOTE: its weights outlive a remove_adapter meanwhile
        detok = IncrementalDetokenizer(
            self.tokenizer,
            token_ids,
            skip_special_tokens=params.skip_special_tokens,
            stop=params.stop,
        )
        state = RequestState.create(request_id, text, seq, detok)
        self._requests[request_id] = state
        self._by_seq[seq.seq_id] = state
        self.scheduler.add(seq)
        return request_id

    def abort_request(self, request_id: str) -> bool:
        """Cancel a request; its final output (``"abort"``) comes with the next step.

        Returns:
            True if the request was waiting or running, False if unknown or already done.
        """
        state = self._requests.get(request_id)
        if state is None or self.scheduler.abort(state.seq.seq_id) is None:
            return False
        state.metrics.finished_time = time.perf_counter()
        self._aborted.append(self._retire(state))
        return True

    def has_unfinished_requests(self) -> bool:
        """Whether any request is waiting or running."""
        return self.scheduler.has_unfinished() or bool(self._aborted)

    def step(self) -> list[RequestOutput]:
        """Run one scheduling step and one forward pass.

        A step computes a token for every running request and prompt tokens (whole or a
        chunk) of newly admitted ones, within ``max_num_batched_tokens``.

        Returns:
            An output for every request that produced a token, finished or was aborted
            (a request whose prompt is still being computed in chunks has none).
        """
        outputs, self._aborted = self._aborted, []
        work = self.scheduler.schedule()
        if work is None or not work.seqs:
            return outputs
        bound = self._bind_adapters(work.seqs)
        pairs = list(zip(work.seqs, work.num_new_tokens, strict=True))
        if bound:  # NOTE: sequences of one adapter side by side: each slot's tokens are one slice
            pairs.sort(key=lambda pair: pair[0].adapter_index)
        seqs = [seq for seq, _ in pairs]
        done = [seq for seq in seqs if seq.num_computed_tokens == len(seq)]
        try:
            sampled = self.runner.run(seqs, [n for _, n in pairs])
        finally:
            self._release_adapters(bound)
        now = time.perf_counter()
        for seq, token_id, logprobs in zip(done, sampled.token_ids, sampled.logprobs, strict=True):
            state = self._by_seq[seq.seq_id]
            reason = state.add_token(token_id, logprobs, now)
            if reason is not None:
                self.scheduler.finish(seq, reason)
                state.metrics.finished_time = now
                outputs.append(self._retire(state))
            else:
                outputs.append(state.output())
        return outputs

    def generate(
        self,
        prompts: PromptInput | Sequence[PromptInput],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        adapter: AdapterChoice | None = None,
    ) -> list[RequestOutput]:
        """Run a batch of prompts to completion.

        Args:
            prompts: One prompt or a list of prompts (text, chat messages or token ids).
            params: One set of parameters for all, or one per prompt.
            adapter: Shorthand for ``SamplingParams(adapter=...)`` on every prompt.

        Returns:
            The final output of each prompt, in order.

        Raises:
            InvalidRequestError: A prompt or parameter is invalid; no prompt of this batch
                is queued (requests added before keep running).
        """
        if is_single_prompt(prompts):
            batch = [cast(PromptInput, prompts)]
        else:
            batch = list(cast("Sequence[PromptInput]", prompts))
        per_prompt = [_with_adapter(p, adapter) for p in self._params_for(batch, params)]
        for prompt, p in zip(batch, per_prompt, strict=False):
            self._check_prompt(prompt, p)
        ids = [self.add_request(prompt, p) for prompt, p in zip(batch, per_prompt, strict=False)]
        finals = self._run_until_done(set(ids))
        return [finals[request_id] for request_id in ids]

    def stream(
        self,
        prompt: PromptInput,
        params: SamplingParams | None = None,
        *,
        adapter: AdapterChoice | None = None,
    ) -> Iterator[str]:
        """Generate for one prompt, yielding text pieces as they are decoded.

        Closing the iterator early cancels the request.

        Args:
            prompt: Text, chat messages or token ids.
            params: Sampling parameters (default greedy).
            adapter: Shorthand for ``SamplingParams(adapter=...)``: a registered adapter's
                name or a weighted mix ``{"a": 0.7, "b": 0.3}``.

        Raises:
            InvalidRequestError: Bad prompt or parameters, or ``adapter`` given beside
                ``params`` naming another adapter.
        """
        for output in self.stream_outputs(prompt, params, adapter=adapter):
            if output.delta_text:
                yield output.delta_text

    def stream_outputs(
        self,
        prompt: PromptInput,
        params: SamplingParams | None = None,
        *,
        adapter: AdapterChoice | None = None,
    ) -> Iterator[RequestOutput]:
        """Like :meth:`stream`, yielding each step's :class:`RequestOutput` (deltas, metrics)."""
        request_id = self.add_request(prompt, _with_adapter(params, adapter))
        try:
            while True:
                for output in self.step():
                    if output.request_id == request_id:
                        yield output
                        if output.finished:
                            return
        finally:
            self.abort_request(request_id)

    def _run_until_done(self, pending: set[str]) -> dict[str, RequestOutput]:
        finals: dict[str, RequestOutput] = {}
        while pending:
            for output in self.step():
                if output.finished and output.request_id in pending:
                    finals[output.request_id] = output
                    pending.discard(output.request_id)
        return finals

    def add_adapter(
        self, name: str, source: str | os.PathLike[str], *, sha256: str | None = None
    ) -> AdapterSpec:
        """Register a LoRA adapter; requests use it with ``SamplingParams(adapter=name)``.

        The adapter is validated against the base model now (its weights hashed) and
        loaded on first use. Downloads follow ``engine.adapters.source_policy`` (https
        only, no private addresses, byte caps, a deadline; see docs/serve.md).

        Args:
            name: Name for requests; not registered yet, without ``*``, ``+`` or ``#``.
            source: A PEFT folder (safetensors), ``hf://org/repo[@revision]`` or an
                https archive URL (``.tar.gz``, ``.zip``).
            sha256: Expected sha256 of an archive URL's body.

        Returns:
            What was registered (targets, ranks, verified manifest adapter id).

        Raises:
            AdapterNotFoundError: The source cannot be had.
            AdapterSourceError: The source breaks the download rules or its pin.
            AdapterFormatError: Pickle weights, corrupt safetensors, unsupported PEFT
                options, a config field out of range, or a manifest id that is not the
                hash of the weights.
            AdapterMismatchError: Made for another base model (manifest, shapes, modules).
            ConfigError: The name is taken or invalid, or the engine serves no adapters.
        """
        return self._require_adapters().add(name, source, sha256=sha256)

    def remove_adapter(self, name: str) -> None:
        """Unregister an adapter; it is unloaded once no admitted request uses it.

        Requests already admitted with it finish with its weights; the name can be
        registered again at once.

        Raises:
            AdapterNotFoundError: Unknown name.
        """
        self._require_adapters().remove(name)

    def merge_adapters(
        self,
        name: str,
        weights: Mapping[str, float],
        *,
        combination: Literal["linear", "cat", "ties", "dare_linear", "dare_ties"] = "cat",
        output_dir: str | os.PathLike[str] | None = None,
        register: bool = True,
        density: float | None = None,
        seed: int = 0,
        majority_sign_method: Literal["total", "frequency"] = "total",
    ) -> Path:
        """Write a weighted combination of registered adapters as a new adapter folder.

        The folder is a PEFT LoRA adapter plus ``openledger_manifest.json`` naming the
        sources and weights (see :func:`openledger.serve.merge_adapters`); it is registered
        under ``name`` when ``register``.

        Args:
            name: Name of the merged adapter (registered under it when ``register``).
            weights: ``{adapter name: weight}`` in merge order.
            combination: ``"cat"`` (exact: the same update as the per-request mix),
                ``"linear"``, ``"ties"``, ``"dare_linear"`` or ``"dare_ties"``.
            output_dir: A new or empty folder; default a temporary folder removed with the
                engine.
            register: Register the result under ``name``.
            density: Kept fraction for ``ties`` and ``dare_*``, in ``(0, 1]``.
            seed: Seed of DARE's random pruning.
            majority_sign_method: TIES sign election, ``"total"`` or ``"frequency"``.

        Returns:
            The written folder.

        Raises:
            ConfigError: No adapters served, ``name`` taken or invalid, or a bad merge
                argument; nothing is written.
            AdapterNotFoundError: A source is not registered.
            AdapterMismatchError: Ranks differ on a module (all but ``cat``), or the sources
                name different base weights.
        """
        from openledger.serve.adapters.merge import merge_adapters

        store = self._require_adapters()
        if register:
            if name in store:
                raise ConfigError(f"adapter {name!r} is registered; remove_adapter({name!r}) first")
            if not name or any(c in name for c in "*+"):
                raise ConfigError(f"adapter name {name!r} must be non-empty, without '*' or '+'")
        if output_dir is not None:
            folder = Path(output_dir)
        else:  # lives as long as the engine: the registered adapter is read from it
            tmp = tempfile.TemporaryDirectory(prefix="openledger-merged-")
            self._merged_folders.append(tmp)
            folder = Path(tmp.name) / "adapter"
        path = merge_adapters(
            store,
            weights,
            folder,
            combination=combination,
            density=density,
            seed=seed,
            majority_sign_method=majority_sign_method,
        )
        if register:
            store.add(name, path)
        return path

    def _adapter_store(self) -> AdapterStore | None:
        from openledger.serve.adapters import AdapterStore
        from openledger.serve.layers.lora import attach_lora

        slots = self.config.max_adapter_slots
        slots = self.config.max_num_seqs if slots is None else slots
        if slots == 0:
            return None
        if slots < self.config.max_num_seqs:
            raise ConfigError(
                f"max_adapter_slots={slots} is below max_num_seqs={self.config.max_num_seqs}; "
                "every running request's adapter needs a slot"
            )
        runner = self.runner
        config = self.config
        runner.lora = attach_lora(
            runner.model,
            slots,
            runner.device,
            backend=config.lora_backend,
            cpu_kernel=config.cpu_kernels,
            batched=config.lora_batched_decode,
        )
        dtype = runner.model.embed_tokens.weight.dtype
        return AdapterStore(
            self.model_config,
            runner.lora,
            dtype=dtype,
            device=runner.device,
            max_host_bytes=self.config.max_adapter_host_memory,
        )

    def _require_adapters(self) -> AdapterStore:
        if self.adapters is None:
            raise ConfigError("this engine serves no adapters (EngineConfig.max_adapter_slots=0)")
        return self.adapters

    def _adapter_use(self, params: SamplingParams) -> AdapterUse | None:
        if params.adapter is None:
            return None
        store = self._require_adapters()
        use = store.resolve(params.adapter)
        store.prefetch(use)  # NOTE: unreadable weights refuse this request now
        return use

    def _bind_adapters(self, seqs: list[SequenceState]) -> list[AdapterUse]:
        bound: list[AdapterUse] = []
        try:
            for seq in seqs:
                use = self._uses.get(seq.seq_id)
                if use is not None and self.adapters is not None:
                    seq.adapter_index = self.adapters.acquire(use)
                    bound.append(use)
        except Exception:
            self._release_adapters(bound)
            raise
        return bound

    def _release_adapters(self, bound: list[AdapterUse]) -> None:
        if self.adapters is not None:
            for use in bound:
                self.adapters.release(use)

    def _retire(self, state: RequestState) -> RequestOutput:
        del self._requests[state.request_id]
        del self._by_seq[state.seq.seq_id]
        use = self._uses.pop(state.seq.seq_id, None)
        if use is not None and self.adapters is not None:
            self.adapters.drop(use)
        output = state.output()
        output.usage = RequestUsage(
            prompt_tokens=state.seq.num_prompt_tokens,
            completion_tokens=state.seq.num_output_tokens,
            adapters=use.names if use else (),
            adapter_weights=use.weights if use else (),
            adapter_ids=use.adapter_ids if use else (),
        )
        return output

    def _new_sequence(
        self, number: int, token_ids: list[int], params: SamplingParams
    ) -> SequenceState:
        self._check_tokens(token_ids)
        self._check_length(len(token_ids), params)
        total = min(len(token_ids) + params.max_tokens, self.max_model_len)
        return SequenceState(
            number, token_ids, len(token_ids), params, total, eos_token_ids=self._eos
        )

    def _check_prompt(self, prompt: PromptInput, params: SamplingParams) -> None:
        self._adapter_use(params)
        _, token_ids = tokenize_prompt(self.tokenizer, prompt)
        self._check_tokens(token_ids)
        self._check_length(len(token_ids), params)

    def _check_tokens(self, token_ids: list[int]) -> None:
        vocab = self.model_config.vocab_size
        if any(not 0 <= token < vocab for token in token_ids):
            raise InvalidRequestError(f"prompt token ids must be in [0, {vocab})")

    def _check_length(self, num_tokens: int, params: SamplingParams) -> None:
        if num_tokens >= self.max_model_len:
            raise InvalidRequestError(
                f"prompt has {num_tokens} tokens; the context holds {self.max_model_len} "
                "(prompt + at least one generated token). Shorten the prompt."
            )
        total = min(num_tokens + params.max_tokens, self.max_model_len)
        if self.block_pool.blocks_needed(total) > self.block_pool.num_blocks:
            raise InvalidRequestError(
                f"prompt + max_tokens = {total} tokens needs more KV blocks than the cache has "
                f"({self.block_pool.num_blocks} x {self.block_pool.block_size}); lower max_tokens "
                "or raise EngineConfig.kv_cache_memory"
            )

    @staticmethod
    def _params_for(
        batch: list[Any], params: SamplingParams | Sequence[SamplingParams] | None
    ) -> list[SamplingParams]:
        if params is None or isinstance(params, SamplingParams):
            return [params or SamplingParams()] * len(batch)
        per_prompt = list(params)
        if len(per_prompt) != len(batch):
            raise InvalidRequestError(f"{len(per_prompt)} SamplingParams for {len(batch)} prompts")
        return per_prompt


def _with_adapter(params: SamplingParams | None, adapter: AdapterChoice | None) -> SamplingParams:
    """``params`` with ``adapter`` set (it must not contradict an adapter already set)."""
    params = params or SamplingParams()
    if adapter is None:
        return params
    if params.adapter is not None and params.adapter != adapter:
        raise InvalidRequestError(
            f"adapter={adapter!r} contradicts SamplingParams(adapter={params.adapter!r})"
        )
    return dataclasses.replace(params, adapter=adapter)
