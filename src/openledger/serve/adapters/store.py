r"""The adapter store: registered (disk) -> host memory -> device slots.

::

    add()        validate from config + safetensors header; keep the spec only   (disk)
    load_host()  read the weights once; LRU within max_host_bytes               (host)
    warm()       load_host() ahead of first use, while the budget has room
    prefetch()   load_host() for a request's adapters unless already in a slot
    acquire()    put an adapter (or a weighted mix) in a device slot; LRU, pins  (device)

A request names one adapter, none, or a weighted mix ``{"a": 0.7, "b": 0.3}``; a mix is
its own slot entry whose weights are the exact concatenation of its members
(:func:`~openledger.serve.ops.lora_torch.combine_lora_weights`), never merged into the
base model (a mix of DoRA or ``modules_to_save`` adapters is refused: neither is linear in
its weights). Names, registrations and the requests holding them are the store's
:class:`~openledger.serve.adapters.registry.AdapterRegistry`: slots and host copies belong
to registrations, so a removed adapter's weights serve its admitted requests to the end.

Adapters with ``modules_to_save`` carry whole ``[vocab, hidden]`` copies of ``lm_head``
and/or ``embed_tokens``; at most ``max_head_adapters`` of them are registered at once
(registering one more is refused), which bounds the memory those copies take in host
memory and in device slots.
"""

from __future__ import annotations

import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import httpx
import torch

from openledger.exceptions import (
    AdapterCapacityError,
    AdapterNotFoundError,
    ConfigError,
    InvalidRequestError,
)
from openledger.serve.adapters.loading import (
    AdapterSpec,
    BaseWeights,
    LoadedAdapter,
    inspect_adapter,
    load_adapter,
)
from openledger.serve.adapters.policy import AdapterSourcePolicy
from openledger.serve.adapters.registry import (
    AdapterRef,
    AdapterRegistry,
    AdapterUse,
    key_registrations,
)
from openledger.serve.adapters.slots import SlotTable
from openledger.serve.adapters.sources import resolve_source
from openledger.serve.layers.lora import LoraState
from openledger.serve.models.config import ModelConfig
from openledger.serve.ops.lora_torch import LoraWeights, combine_lora_weights

__all__ = ["AdapterRef", "AdapterStore", "AdapterUse", "SlotInstall"]

SlotInstall = Callable[
    [int, Mapping[str, LoraWeights] | None, Mapping[str, torch.Tensor] | None], None
]
"""Puts an adapter's weights (and ``modules_to_save`` copies) into a device slot; None
empties it (:meth:`~openledger.serve.layers.lora.LoraState.install`'s signature)."""


class AdapterStore:
    """Registered adapters, a bounded host cache, and a fixed pool of device slots.

    Args:
        config: The engine's model.
        state: The model's LoRA state (its slots are the device tier).
        dtype: Dtype the weights are served in.
        device: Where the slots live.
        max_host_bytes: Host memory for loaded adapters; least recently used go first.
        cache_dir: Where downloaded archives are kept; when None, a temporary folder that
            is removed with the store.
        http_client: httpx client for URL sources (tests inject a MockTransport); when
            None, one that reaches only the addresses ``source_policy`` allows.
        source_policy: Rules for downloading sources (https only, caps, deadline,
            pinning); the defaults when None.
        base_weights_hash: Returns the base model's weights hash (compared with adapter
            manifests); called once, on the first adapter with a manifest.
        base_weights: The base projections by engine module name (DoRA adapters need
            them to load; without it they are refused when loaded).
        max_head_adapters: Adapters with ``modules_to_save`` registered at once.
        install: Puts weights into a slot instead of ``state.install`` (same arguments;
            a tensor-parallel engine's rank 0 installs on every rank).
        dora_refusal: Why DoRA adapters are refused at registration (a tensor-parallel
            engine); None serves them.
    """

    def __init__(
        self,
        config: ModelConfig,
        state: LoraState,
        *,
        dtype: torch.dtype,
        device: torch.device,
        max_host_bytes: int = 1 << 30,
        cache_dir: str | os.PathLike[str] | None = None,
        http_client: httpx.Client | None = None,
        base_weights_hash: Callable[[], str | None] | None = None,
        source_policy: AdapterSourcePolicy | None = None,
        base_weights: BaseWeights | None = None,
        max_head_adapters: int = 2,
        install: SlotInstall | None = None,
        dora_refusal: str | None = None,
    ) -> None:
        self.config = config
        self.base_weights = base_weights
        self.max_head_adapters = max_head_adapters
        self.state = state
        self._install: SlotInstall = install or state.install
        self._dora_refusal = dora_refusal
        self.dtype = dtype
        self.device = device
        self.max_host_bytes = max_host_bytes
        self.slots: SlotTable[str] = SlotTable(state.num_slots)
        # Downloaded archives live in cache_dir, or in a private folder removed with the store.
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if cache_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="openledger-adapters-")
            cache_dir = self._tmp.name
        self._cache_dir = Path(cache_dir)
        self._http = http_client
        self.source_policy = source_policy or AdapterSourcePolicy()
        self._hash_fn = base_weights_hash
        self._base_hash: str | None = None
        self.registry = AdapterRegistry()
        self._host: OrderedDict[str, LoadedAdapter] = OrderedDict()  # by registration
        self._host_bytes = 0

    def __contains__(self, name: object) -> bool:
        return name in self.registry

    def __len__(self) -> int:
        return len(self.registry)

    @property
    def host_bytes(self) -> int:
        """Bytes of adapter weights held in host memory."""
        return self._host_bytes

    def add(
        self, name: str, source: str | os.PathLike[str], *, sha256: str | None = None
    ) -> AdapterSpec:
        """Register an adapter after validating it against the base model.

        Args:
            name: Name requests use; must not be registered yet.
            source: Local folder, ``hf://org/repo[@revision]`` or archive URL.
            sha256: Expected sha256 of an archive URL's body (or ``#sha256=`` in the URL).

        Returns:
            The registered spec.

        Raises:
            ConfigError: The name is empty, contains ``*``/``+``/``#``, or is registered.
            AdapterNotFoundError: The source cannot be had.
            AdapterSourceError: The source breaks :attr:`source_policy` or its pin.
            AdapterFormatError: Not a usable safetensors PEFT LoRA adapter, or a manifest
                whose adapter id is not the hash of its weights.
            AdapterMismatchError: Made for another base model.
        """
        self.registry.check_name(name, free=True)
        return self.register(self.prepare(name, source, sha256=sha256))

    def prepare(
        self, name: str, source: str | os.PathLike[str], *, sha256: str | None = None
    ) -> AdapterSpec:
        """Fetch and validate an adapter without registering it (the slow half of :meth:`add`).

        Touches nothing a running step reads, so it may run beside steps; pass the spec
        to :meth:`register` between steps. Arguments and errors as :meth:`add`, except
        that ``name`` may be registered (to replace it).
        """
        self.registry.check_name(name, free=False)

        def inspect(folder: Path) -> AdapterSpec:
            return inspect_adapter(name, folder, self.config, self._base_weights_hash(folder))

        folder = resolve_source(
            source,
            self._cache_dir,
            http_client=self._http,
            policy=self.source_policy,
            sha256=sha256,
            check=inspect,  # NOTE: an adapter refused here never enters the download cache
        )
        return inspect(folder)

    def register(self, spec: AdapterSpec) -> AdapterSpec:
        """Register a spec from :meth:`prepare` under its name.

        Raises:
            ConfigError: The name is registered (or invalid), or a DoRA adapter where
                ``dora_refusal`` says why not.
            AdapterCapacityError: ``spec`` has ``modules_to_save`` copies and
                :attr:`max_head_adapters` such adapters are registered (or still serve
                requests after removal).
        """
        if spec.use_dora and self._dora_refusal is not None:
            raise ConfigError(f"adapter {spec.name!r}: {self._dora_refusal}")
        if spec.saved_modules:
            holding = [s.name for s in self.registry.specs.values() if s.saved_modules]
            if len(holding) >= self.max_head_adapters:
                raise AdapterCapacityError(
                    f"adapter {spec.name!r} saves {sorted(spec.saved_modules)} (whole "
                    f"[vocab, hidden] copies); {len(holding)} such adapters are registered "
                    f"({', '.join(sorted(holding))}), the most this engine holds "
                    "(EngineConfig.max_adapter_heads); remove one first"
                )
        self.registry.register(spec)
        return spec

    def spec(self, name: str) -> AdapterSpec:
        """The registered adapter ``name`` (folder, targets, ranks, scalings).

        Raises:
            AdapterNotFoundError: Unknown name.
        """
        return self.registry.specs[self.registry.registration(name)]

    def remove(self, name: str) -> None:
        """Forget an adapter's name; its weights go when no request uses them any more.

        Requests already admitted with it (see :meth:`retain`) finish with its weights;
        new requests cannot name it, and the name may be registered again at once.

        Raises:
            AdapterNotFoundError: Unknown name.
        """
        released = self.registry.remove(name)
        if released is not None:
            self._unload(released)

    def retain(self, use: AdapterUse) -> None:
        """Count a request admitted with ``use``: its registrations stay loadable until
        :meth:`drop`, even if their names are removed meanwhile."""
        self.registry.retain(use)

    def drop(self, use: AdapterUse) -> None:
        """Undo one :meth:`retain` (the request ended); unloads removed registrations
        no request uses any more."""
        for registration in self.registry.drop(use):
            self._unload(registration)

    def _unload(self, registration: str) -> None:
        for key in self.slots.resident():
            if registration in key_registrations(key):
                self._unload_slot(key)
        self._drop_host(registration)
        self.registry.specs.pop(registration, None)

    def resolve(self, ref: AdapterRef) -> AdapterUse:
        """Check a request's adapter choice and give its canonical form.

        Raises:
            AdapterNotFoundError: A named adapter is not registered.
            InvalidRequestError: A malformed mix (empty, non-finite or zero weights), or a
                mix naming a DoRA or ``modules_to_save`` adapter.
        """
        use = self.registry.resolve(ref)
        if "*" in use.key:
            for name, registration in zip(use.names, use.registrations, strict=True):
                spec = self.registry.specs[registration]
                if spec.use_dora or spec.saved_modules:
                    kind = "a DoRA" if spec.use_dora else "a modules_to_save"
                    raise InvalidRequestError(
                        f"adapter {name!r} is {kind} adapter, whose update is not linear in "
                        "its weights: it cannot be part of a weighted mix; name it alone"
                    )
        return use

    def load_host(self, name: str) -> LoadedAdapter:
        """The adapter's weights in host memory, read from disk on first use.

        Raises:
            AdapterNotFoundError: Unknown name.
            AdapterFormatError: The weights changed since registration or are unreadable.
        """
        return self._load_registration(self.registry.registration(name))

    def warm(self, names: Iterable[str]) -> list[str]:
        """Read registered adapters into host memory ahead of their first request, in
        order, while they fit in :attr:`max_host_bytes`.

        The first request for an adapter otherwise reads (and checks the hash of) its
        weights as it is admitted, on the caller's thread: on a server's event loop every
        request waits for it. Stops at the first adapter that fills the budget (the least
        recently used is then dropped, as on any load).

        Returns:
            The names now in host memory.

        Raises:
            AdapterNotFoundError, AdapterFormatError: As :meth:`load_host`.
        """
        warmed: list[str] = []
        for name in names:
            held = len(self._host) + (not self.in_host(name))
            self.load_host(name)
            warmed.append(name)
            if self._host_bytes >= self.max_host_bytes or len(self._host) < held:
                break  # NOTE: full, or this read pushed another out: more would only do so
        return [name for name in warmed if self.in_host(name)]

    def in_host(self, name: str) -> bool:
        """Whether the adapter registered as ``name`` is in host memory.

        Raises:
            AdapterNotFoundError: Unknown name.
        """
        return self.registry.registration(name) in self._host

    def _load_registration(self, registration: str) -> LoadedAdapter:
        if registration in self._host:
            self._host.move_to_end(registration)
            return self._host[registration]
        spec = self.registry.specs.get(registration)
        if spec is None:
            raise AdapterNotFoundError(f"adapter registration {registration!r} was removed")
        loaded = load_adapter(spec, self.config, self.dtype, self.base_weights)
        self._host[registration] = loaded
        self._host_bytes += loaded.num_bytes
        while self._host_bytes > self.max_host_bytes and len(self._host) > 1:
            self._drop_host(next(iter(self._host)))
        return loaded

    def prefetch(self, use: AdapterUse) -> None:
        """Read ``use``'s weights into host memory ahead of its first step, so unreadable
        weights refuse the request when it arrives; nothing is read while ``use`` is
        resident in a device slot (the slot serves it, and a host copy would only push
        other adapters out of the host budget).

        Raises:
            AdapterNotFoundError, AdapterFormatError: As :meth:`load_host`.
        """
        if self.slots.slot_of(use.key) is not None:
            return
        for registration in use.registrations:
            self._load_registration(registration)

    def acquire(self, use: AdapterUse) -> int:
        """Make ``use`` resident in a device slot (loading it just in time) and pin it.

        Returns:
            The slot; call :meth:`release` when the step that needs it is done.

        Raises:
            AdapterCapacityError: Every slot is pinned.
        """
        resident = self.slots.slot_of(use.key) is not None
        slot, _ = self.slots.acquire(use.key)
        if not resident:
            try:
                self._install(slot, self._device_weights(use), self._device_heads(use))
            except Exception:
                self.slots.release(use.key)
                raise
        self.slots.pin(use.key)
        return slot

    def release(self, use: AdapterUse) -> None:
        """Undo one :meth:`acquire` (the slot stays loaded until evicted)."""
        self.slots.unpin(use.key)

    def _device_weights(self, use: AdapterUse) -> dict[str, LoraWeights]:
        members = [self._load_registration(r).modules for r in use.registrations]
        if len(members) == 1 and use.weights == (1.0,) and "*" not in use.key:
            return {n: w.to(self.device, self.dtype) for n, w in members[0].items()}
        combined: dict[str, LoraWeights] = {}
        for module in sorted({m for modules in members for m in modules}):
            parts = [
                (modules[module], weight)
                for modules, weight in zip(members, use.weights, strict=True)
                if module in modules
            ]
            combined[module] = combine_lora_weights(parts).to(self.device, self.dtype)
        return combined

    def _device_heads(self, use: AdapterUse) -> dict[str, torch.Tensor]:
        if "*" in use.key:  # NOTE: resolve() refuses mixes of adapters with copies
            return {}
        heads = self._load_registration(use.registrations[0]).heads
        return {m: t.to(self.device, self.dtype) for m, t in heads.items()}

    def _unload_slot(self, key: str) -> None:
        slot = self.slots.release(key)
        if slot is not None:
            self._install(slot, None, None)

    def _drop_host(self, registration: str) -> None:
        loaded = self._host.pop(registration, None)
        if loaded is not None:
            self._host_bytes -= loaded.num_bytes

    def _base_weights_hash(self, folder: Path) -> str | None:
        if self._hash_fn is None or not (folder / "openledger_manifest.json").is_file():
            return None
        if self._base_hash is None:
            self._base_hash = self._hash_fn()
        return self._base_hash
