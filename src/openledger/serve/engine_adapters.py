"""The engine's adapter side: its store, each request's use of it, and merges.

:class:`EngineAdapters` builds the adapter store and the model's LoRA state for an
:class:`~openledger.serve.engine.Engine`, ties each admitted request to the adapters it
named (their prefix-cache salt, their weights kept until it ends), puts a step's adapters
in device slots for the step and takes them out after it, and writes merged adapters.
:class:`AdapterMethods` is the engine's public face of it (``add_adapter``,
``remove_adapter``, ``merge_adapters``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from openledger.exceptions import ConfigError
from openledger.serve.config import EngineConfig
from openledger.serve.params import SamplingParams
from openledger.serve.sequence import SequenceState

if TYPE_CHECKING:  # NOTE: the adapter store imports torch; the engine stays importable without
    from openledger.serve.adapters import AdapterSpec, AdapterStore, AdapterUse
    from openledger.serve.layers.lora import LoraState
    from openledger.serve.model_runner import ModelRunner
    from openledger.serve.models.config import ModelConfig

__all__ = ["AdapterMethods", "EngineAdapters", "adapter_slots", "attach_adapter_slots"]

Combination = Literal["linear", "cat", "ties", "dare_linear", "dare_ties"]


class EngineAdapters:
    """An engine's adapter store (None when ``max_adapter_slots`` is 0) and the adapters of
    its admitted requests.

    Args:
        config: The engine's settings (slots, LoRA backend, host memory).
        model_config: The served model.
        runner: The engine's model runner (its model gets the LoRA state).

    Raises:
        ConfigError: Fewer adapter slots than running sequences.
    """

    def __init__(
        self, config: EngineConfig, model_config: ModelConfig, runner: ModelRunner
    ) -> None:
        self.store = _make_store(config, model_config, runner)
        self._uses: dict[int, AdapterUse] = {}
        self._merged_folders: list[tempfile.TemporaryDirectory[str]] = []

    def require(self) -> AdapterStore:
        """The store.

        Raises:
            ConfigError: The engine serves no adapters.
        """
        if self.store is None:
            raise ConfigError("this engine serves no adapters (EngineConfig.max_adapter_slots=0)")
        return self.store

    def use_for(self, params: SamplingParams) -> AdapterUse | None:
        """The adapters ``params`` names, their weights read now (None: no adapter).

        Raises:
            AdapterError: Unknown, or unreadable weights (only this request is refused).
        """
        if params.adapter is None:
            return None
        store = self.require()
        use = store.resolve(params.adapter)
        store.prefetch(use)  # NOTE: unreadable weights refuse this request now
        return use

    def attach(self, seq: SequenceState, use: AdapterUse | None) -> None:
        """Tie an admitted sequence to ``use`` until :meth:`detach`."""
        if use is not None and self.store is not None:
            seq.cache_salt = use.cache_salt
            self._uses[seq.seq_id] = use
            self.store.retain(use)  # NOTE: its weights outlive a remove_adapter meanwhile

    def detach(self, seq: SequenceState) -> AdapterUse | None:
        """Untie a finished or aborted sequence; its adapters may be unloaded now."""
        use = self._uses.pop(seq.seq_id, None)
        if use is not None and self.store is not None:
            self.store.drop(use)
        return use

    def bind(self, seqs: list[SequenceState]) -> list[AdapterUse]:
        """Put the step's adapters in device slots (each sequence's ``adapter_index``);
        hand the result to :meth:`release` after the step."""
        bound: list[AdapterUse] = []
        try:
            for seq in seqs:
                use = self._uses.get(seq.seq_id)
                if use is not None and self.store is not None:
                    seq.adapter_index = self.store.acquire(use)
                    bound.append(use)
        except Exception:
            self.release(bound)
            raise
        return bound

    def release(self, bound: list[AdapterUse]) -> None:
        """Unpin a step's slots."""
        if self.store is not None:
            for use in bound:
                self.store.release(use)

    def merge(
        self,
        name: str,
        weights: Mapping[str, float],
        *,
        combination: Combination,
        output_dir: str | os.PathLike[str] | None,
        register: bool,
        density: float | None,
        seed: int,
        majority_sign_method: Literal["total", "frequency"],
    ) -> Path:
        """See :meth:`AdapterMethods.merge_adapters`."""
        from openledger.serve.adapters.merge import merge_adapters

        store = self.require()
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


def adapter_slots(config: EngineConfig) -> int:
    """The adapter slots ``config`` asks for (0: no adapters).

    Raises:
        ConfigError: Fewer adapter slots than running sequences.
    """
    slots = config.max_num_seqs if config.max_adapter_slots is None else config.max_adapter_slots
    if 0 < slots < config.max_num_seqs:
        raise ConfigError(
            f"max_adapter_slots={slots} is below max_num_seqs={config.max_num_seqs}; "
            "every running request's adapter needs a slot"
        )
    return slots


def attach_adapter_slots(config: EngineConfig, runner: ModelRunner) -> LoraState | None:
    """Give ``runner``'s model the adapter slots ``config`` asks for (``runner.lora``);
    None when it serves no adapters. Every tensor-parallel rank calls it alike.

    Raises:
        ConfigError: Fewer adapter slots than running sequences.
    """
    from openledger.serve.layers.lora import attach_lora

    slots = adapter_slots(config)
    if slots == 0:
        return None
    runner.lora = attach_lora(
        runner.model,
        slots,
        runner.device,
        backend=config.lora_backend,
        cpu_kernel=config.cpu_kernels,
        batched=config.lora_batched_decode,
    )
    return runner.lora


def _make_store(
    config: EngineConfig, model_config: ModelConfig, runner: ModelRunner
) -> AdapterStore | None:
    from openledger.serve.adapters import AdapterStore

    state = attach_adapter_slots(config, runner)
    if state is None:
        return None
    from openledger.serve.parallel.runner import ParallelModelRunner

    parallel = isinstance(runner, ParallelModelRunner)
    return AdapterStore(
        model_config,
        state,
        dtype=runner.model.embed_tokens.weight.dtype,
        device=runner.device,
        max_host_bytes=config.max_adapter_host_memory,
        base_weights=None if parallel else runner.base_projection,
        max_head_adapters=config.max_adapter_heads,
        install=runner.install_adapter if isinstance(runner, ParallelModelRunner) else None,
        dora_refusal=(
            f"DoRA adapters are not served with tensor_parallel_size="
            f"{config.tensor_parallel_size} (their magnitudes need whole base weights); "
            "serve them on an engine of size 1"
            if parallel
            else None
        ),
    )


class AdapterMethods:
    """The adapter methods of :class:`~openledger.serve.engine.Engine`."""

    _adapters: EngineAdapters

    def add_adapter(
        self, name: str, source: str | os.PathLike[str], *, sha256: str | None = None
    ) -> AdapterSpec:
        """Register a LoRA adapter; requests use it with ``SamplingParams(adapter=name)``.

        PEFT LoRA, rsLoRA, ``rank_pattern``/``alpha_pattern``, DoRA and ``modules_to_save``
        copies of ``lm_head``/``embed_tokens`` are served (docs/serve.md, Adapters).

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
                options (biases; modules_to_save other than lm_head and embed_tokens), a
                config field out of range, or a manifest id that is not the hash of the
                weights.
            AdapterMismatchError: Made for another base model (manifest, shapes, modules).
            AdapterCapacityError: It has modules_to_save copies and
                ``EngineConfig.max_adapter_heads`` such adapters are registered.
            ConfigError: The name is taken or invalid, the engine serves no adapters, or
                a DoRA adapter on an engine with ``tensor_parallel_size > 1``.
        """
        return self._adapters.require().add(name, source, sha256=sha256)

    def remove_adapter(self, name: str) -> None:
        """Unregister an adapter; it is unloaded once no admitted request uses it.

        Requests already admitted with it finish with its weights; the name can be
        registered again at once.

        Raises:
            AdapterNotFoundError: Unknown name.
        """
        self._adapters.require().remove(name)

    def merge_adapters(
        self,
        name: str,
        weights: Mapping[str, float],
        *,
        combination: Combination = "cat",
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
        return self._adapters.merge(
            name,
            weights,
            combination=combination,
            output_dir=output_dir,
            register=register,
            density=density,
            seed=seed,
            majority_sign_method=majority_sign_method,
        )
