"""The adapter store: registered (disk) -> host memory -> device slots.

::

    add()        validate from config + safetensors header; keep the spec only   (disk)
    load_host()  read the weights once; LRU within max_host_bytes               (host)
    prefetch()   load_host() for a request's adapters unless already in a slot
    acquire()    put an adapter (or a weighted mix) in a device slot; LRU, pins  (device)

A request names one adapter, none, or a weighted mix ``{"a": 0.7, "b": 0.3}``; a mix is
its own slot entry whose weights are the exact concatenation of its members
(:func:`~openledger.serve.ops.lora_torch.combine_lora_weights`), never merged into the
base model.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch

from openledger.exceptions import AdapterNotFoundError, ConfigError, InvalidRequestError
from openledger.serve.adapters.loading import (
    AdapterSpec,
    LoadedAdapter,
    inspect_adapter,
    load_adapter,
)
from openledger.serve.adapters.slots import SlotTable
from openledger.serve.adapters.sources import resolve_source
from openledger.serve.layers.lora import LoraState
from openledger.serve.models.config import ModelConfig
from openledger.serve.ops.lora_torch import LoraWeights, combine_lora_weights

__all__ = ["AdapterRef", "AdapterStore", "AdapterUse"]

AdapterRef = str | Mapping[str, float]
"""What a request asks for: an adapter name, or ``{name: weight}`` for a weighted mix."""


@dataclass(frozen=True, slots=True)
class AdapterUse:
    """A request's resolved adapter choice (also its usage record).

    Attributes:
        key: Canonical key, e.g. ``"a"`` or ``"a*0.7+b*0.3"`` (the device-slot key).
        names: Adapter names, sorted.
        weights: Their weights (1.0 for a single adapter).
        adapter_ids: Their manifests' adapter ids (None for an adapter without manifest).
        cache_salt: Folded into prefix-cache hashes; unique per registration, so a prefix
            computed under one adapter (or an earlier adapter of the same name) never
            serves another.
    """

    key: str
    names: tuple[str, ...]
    weights: tuple[float, ...]
    adapter_ids: tuple[str | None, ...]
    cache_salt: str


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
        http_client: httpx client for URL sources (tests inject a MockTransport).
        base_weights_hash: Returns the base model's weights hash (compared with adapter
            manifests); called once, on the first adapter with a manifest.
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
    ) -> None:
        self.config = config
        self.state = state
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
        self._hash_fn = base_weights_hash
        self._base_hash: str | None = None
        self._specs: dict[str, AdapterSpec] = {}
        self._salts: dict[str, str] = {}
        self._host: OrderedDict[str, LoadedAdapter] = OrderedDict()
        self._host_bytes = 0
        self._registrations = 0

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __len__(self) -> int:
        return len(self._specs)

    @property
    def host_bytes(self) -> int:
        """Bytes of adapter weights held in host memory."""
        return self._host_bytes

    def add(self, name: str, source: str | os.PathLike[str]) -> AdapterSpec:
        """Register an adapter after validating it against the base model.

        Args:
            name: Name requests use; must not be registered yet.
            source: Local folder, ``hf://org/repo[@revision]`` or archive URL.

        Returns:
            The registered spec.

        Raises:
            ConfigError: The name is empty, contains ``*``/``+``, or is registered.
            AdapterNotFoundError: The source cannot be had.
            AdapterFormatError: Not a usable safetensors PEFT LoRA adapter.
            AdapterMismatchError: Made for another base model.
        """
        if not isinstance(name, str) or not name or set(name) & {"*", "+"}:
            raise ConfigError(f"adapter name must be a non-empty str without '*' or '+': {name!r}")
        if name in self._specs:
            raise ConfigError(f"adapter {name!r} is registered; remove_adapter({name!r}) first")
        folder = resolve_source(source, self._cache_dir, http_client=self._http)
        spec = inspect_adapter(name, folder, self.config, self._base_weights_hash(folder))
        self._registrations += 1
        self._specs[name] = spec
        self._salts[name] = f"{name}#{self._registrations}"
        return spec

    def spec(self, name: str) -> AdapterSpec:
        """The registered adapter ``name`` (folder, targets, ranks, scalings).

        Raises:
            AdapterNotFoundError: Unknown name.
        """
        return self._spec(name)

    def remove(self, name: str) -> None:
        """Forget an adapter and every slot entry using it.

        Raises:
            AdapterNotFoundError: Unknown name.
            AdapterCapacityError: A slot using it is pinned (a request is running with it).
        """
        self._spec(name)
        for key in self.slots.resident():
            if name in _key_names(key):
                self._unload_slot(key)
        self._drop_host(name)
        del self._specs[name], self._salts[name]

    def resolve(self, ref: AdapterRef) -> AdapterUse:
        """Check a request's adapter choice and give its canonical form.

        Raises:
            AdapterNotFoundError: A named adapter is not registered.
            InvalidRequestError: A malformed mix (empty, non-finite or zero weights).
        """
        pairs = _pairs(ref)
        names = tuple(name for name, _ in pairs)
        weights = tuple(weight for _, weight in pairs)
        specs = [self._spec(name) for name in names]
        key = names[0] if isinstance(ref, str) else "+".join(f"{n}*{w!r}" for n, w in pairs)
        salt = "+".join(f"{self._salts[n]}*{w!r}" for n, w in pairs)
        return AdapterUse(key, names, weights, tuple(s.adapter_id for s in specs), salt)

    def load_host(self, name: str) -> LoadedAdapter:
        """The adapter's weights in host memory, read from disk on first use."""
        if name in self._host:
            self._host.move_to_end(name)
            return self._host[name]
        loaded = load_adapter(self._spec(name), self.config, self.dtype)
        self._host[name] = loaded
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
        for name in use.names:
            self.load_host(name)

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
                self.state.install(slot, self._device_weights(use))
            except Exception:
                self.slots.release(use.key)
                raise
        self.slots.pin(use.key)
        return slot

    def release(self, use: AdapterUse) -> None:
        """Undo one :meth:`acquire` (the slot stays loaded until evicted)."""
        self.slots.unpin(use.key)

    def _device_weights(self, use: AdapterUse) -> dict[str, LoraWeights]:
        members = [self.load_host(name).modules for name in use.names]
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

    def _unload_slot(self, key: str) -> None:
        slot = self.slots.release(key)
        if slot is not None:
            self.state.install(slot, None)

    def _drop_host(self, name: str) -> None:
        loaded = self._host.pop(name, None)
        if loaded is not None:
            self._host_bytes -= loaded.num_bytes

    def _spec(self, name: str) -> AdapterSpec:
        spec = self._specs.get(name)
        if spec is None:
            raise AdapterNotFoundError(
                f"no adapter named {name!r} is registered; call add_adapter({name!r}, source) "
                f"first ({len(self._specs)} registered)"
            )
        return spec

    def _base_weights_hash(self, folder: Path) -> str | None:
        if self._hash_fn is None or not (folder / "openledger_manifest.json").is_file():
            return None
        if self._base_hash is None:
            self._base_hash = self._hash_fn()
        return self._base_hash


def _pairs(ref: AdapterRef) -> list[tuple[str, float]]:
    if isinstance(ref, str):
        return [(ref, 1.0)]
    if not isinstance(ref, Mapping) or not ref:
        raise InvalidRequestError(
            f"adapter must be a name or a non-empty {{name: weight}}: {ref!r}"
        )
    pairs: list[tuple[str, float]] = []
    for name, weight in sorted(ref.items()):
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise InvalidRequestError(f"adapter weight of {name!r} must be a number: {weight!r}")
        if not math.isfinite(weight) or weight == 0:
            raise InvalidRequestError(f"adapter weight of {name!r} must be finite and non-zero")
        pairs.append((str(name), float(weight)))
    return pairs


def _key_names(key: str) -> set[str]:
    return {part.rsplit("*", 1)[0] for part in key.split("+")}
