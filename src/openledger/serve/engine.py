"""The engine facade: requests in, steps of continuous batching, outputs out."""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any, cast

from openledger.exceptions import InvalidRequestError
from openledger.serve.block_pool import BlockPool
from openledger.serve.config import EngineConfig
from openledger.serve.detokenizer import IncrementalDetokenizer
from openledger.serve.engine_adapters import AdapterMethods, EngineAdapters
from openledger.serve.outputs import RequestOutput, RequestUsage
from openledger.serve.params import SamplingParams
from openledger.serve.request import (
    AdapterChoice,
    PromptInput,
    RequestLimits,
    RequestState,
    is_single_prompt,
    params_per_prompt,
    tokenize_prompt,
    with_adapter,
)
from openledger.serve.scheduler import Scheduler
from openledger.serve.sequence import SequenceState

__all__ = ["Engine"]

logger = logging.getLogger(__name__)


class Engine(AdapterMethods):
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
            recompute_past=self.model_config.rope.long_context_from,
        )
        self.limits = RequestLimits(
            self.model_config.vocab_size, self.max_model_len, self.block_pool
        )
        self._eos = frozenset(parts.eos_token_ids)
        self._requests: dict[str, RequestState] = {}
        self._by_seq: dict[int, RequestState] = {}
        self._aborted: list[RequestOutput] = []
        self._ids = itertools.count()
        self._close = parts.close
        try:
            self._adapters = EngineAdapters(self.config, self.model_config, self.runner)
        except BaseException:
            self.close()
            raise
        self.adapters = self._adapters.store
        """The adapter store (None when ``EngineConfig.max_adapter_slots`` is 0)."""

    def close(self) -> None:
        """Stop the worker processes of a tensor-parallel engine (``tensor_parallel_size
        > 1``) and leave its process group; its steps raise
        :class:`~openledger.exceptions.EngineDeadError` afterwards. Idempotent; nothing to
        do for a one-process engine. Also done when the engine is garbage collected and
        at interpreter exit.
        """
        if self._close is not None:
            self._close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        use = self._adapters.use_for(params)
        text, token_ids = tokenize_prompt(self.tokenizer, prompt)
        self.limits.check(token_ids, params)
        total = self.limits.total_tokens(len(token_ids), params)
        seq = SequenceState(
            number, token_ids, len(token_ids), params, total, eos_token_ids=self._eos
        )
        self._adapters.attach(seq, use)
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
        bound = self._adapters.bind(work.seqs)
        pairs = list(zip(work.seqs, work.num_new_tokens, strict=True))
        if bound:  # NOTE: sequences of one adapter side by side: each slot's tokens are one slice
            pairs.sort(key=lambda pair: pair[0].adapter_index)
        seqs = [seq for seq, _ in pairs]
        done = [seq for seq in seqs if seq.num_computed_tokens == len(seq)]
        try:
            sampled = self.runner.run(seqs, [n for _, n in pairs])
        finally:
            self._adapters.release(bound)
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
        per_prompt = [with_adapter(p, adapter) for p in params_per_prompt(len(batch), params)]
        for prompt, p in zip(batch, per_prompt, strict=False):  # NOTE: refuse all or none
            self._adapters.use_for(p)
            self.limits.check(tokenize_prompt(self.tokenizer, prompt)[1], p)
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
        request_id = self.add_request(prompt, with_adapter(params, adapter))
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

    def _retire(self, state: RequestState) -> RequestOutput:
        del self._requests[state.request_id]
        del self._by_seq[state.seq.seq_id]
        use = self._adapters.detach(state.seq)
        output = state.output()
        output.usage = RequestUsage(
            prompt_tokens=state.seq.num_prompt_tokens,
            completion_tokens=state.seq.num_output_tokens,
            adapters=use.names if use else (),
            adapter_weights=use.weights if use else (),
            adapter_ids=use.adapter_ids if use else (),
        )
        return output
