r"""Adapter names, their registrations, and the requests that hold them.

Each :meth:`AdapterRegistry.register` is a *registration* (``"a#3"``: the third one, named
``a``). Slots, host copies and prefix-cache salts belong to registrations, not names, so
removing ``a`` and adding a new ``a`` while requests of the old one still run serves each
request the weights it was admitted with: the engine :meth:`~AdapterRegistry.retain`\ s a
request's registrations when it is admitted and :meth:`~AdapterRegistry.drop`\ s them when
it ends; a removed registration is released when its last request ends.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from openledger.exceptions import AdapterNotFoundError, ConfigError, InvalidRequestError
from openledger.serve.adapters.loading import AdapterSpec

__all__ = ["AdapterRef", "AdapterRegistry", "AdapterUse", "key_registrations"]

AdapterRef = str | Mapping[str, float]
"""What a request asks for: an adapter name, or ``{name: weight}`` for a weighted mix."""


@dataclass(frozen=True, slots=True)
class AdapterUse:
    """A request's resolved adapter choice (also its usage record).

    Attributes:
        key: The device-slot key: the registrations, e.g. ``"a#1"`` or
            ``"a#1*0.7+b#2*0.3"``.
        names: Adapter names, sorted.
        weights: Their weights (1.0 for a single adapter).
        adapter_ids: Their manifests' adapter ids, verified to be keccak256 of the
            weights served (None for an adapter without manifest).
        cache_salt: Folded into prefix-cache hashes; unique per registration, so a prefix
            computed under one adapter (or an earlier adapter of the same name) never
            serves another.
        registrations: The registrations of ``names``, e.g. ``("a#1", "b#2")``.
    """

    key: str
    names: tuple[str, ...]
    weights: tuple[float, ...]
    adapter_ids: tuple[str | None, ...]
    cache_salt: str
    registrations: tuple[str, ...] = ()


class AdapterRegistry:
    """Registered adapters by name, and how many admitted requests hold each registration."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        """Each registered name's registration."""
        self.specs: dict[str, AdapterSpec] = {}
        """Registered, or removed but still held by a request."""
        self.refs: dict[str, int] = {}
        """Requests holding each registration."""
        self._count = 0

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __len__(self) -> int:
        return len(self.names)

    def check_name(self, name: str, *, free: bool) -> None:
        """Refuse a malformed name, or (with ``free``) a registered one.

        Raises:
            ConfigError: The name is empty, contains ``*``/``+``/``#``, or is registered.
        """
        if not isinstance(name, str) or not name or set(name) & {"*", "+", "#"}:
            raise ConfigError(
                f"adapter name must be a non-empty str without '*', '+' or '#': {name!r}"
            )
        if free and name in self.names:
            raise ConfigError(f"adapter {name!r} is registered; remove_adapter({name!r}) first")

    def register(self, spec: AdapterSpec) -> str:
        """Register ``spec`` under its name; its new registration.

        Raises:
            ConfigError: The name is registered (or invalid).
        """
        self.check_name(spec.name, free=True)
        self._count += 1
        registration = f"{spec.name}#{self._count}"
        self.names[spec.name] = registration
        self.specs[registration] = spec
        return registration

    def registration(self, name: str) -> str:
        """The registration of ``name``.

        Raises:
            AdapterNotFoundError: Unknown name.
        """
        registration = self.names.get(name)
        if registration is None:
            raise AdapterNotFoundError(
                f"no adapter named {name!r} is registered; call add_adapter({name!r}, source) "
                f"first ({len(self.names)} registered)"
            )
        return registration

    def remove(self, name: str) -> str | None:
        """Forget ``name``; its registration if no request holds it (to release now).

        Raises:
            AdapterNotFoundError: Unknown name.
        """
        registration = self.registration(name)
        del self.names[name]
        return None if self.refs.get(registration) else registration

    def retain(self, use: AdapterUse) -> None:
        """Count a request admitted with ``use``: its registrations stay until :meth:`drop`,
        even if their names are removed meanwhile."""
        for registration in use.registrations:
            self.refs[registration] = self.refs.get(registration, 0) + 1

    def drop(self, use: AdapterUse) -> list[str]:
        """Undo one :meth:`retain` (the request ended); the removed registrations no
        request holds any more (to release now)."""
        released = []
        for registration in use.registrations:
            left = self.refs.get(registration, 0) - 1
            if left > 0:
                self.refs[registration] = left
                continue
            self.refs.pop(registration, None)
            name = registration.rsplit("#", 1)[0]
            if self.names.get(name) != registration:
                released.append(registration)
        return released

    def resolve(self, ref: AdapterRef) -> AdapterUse:
        """Check a request's adapter choice and give its canonical form.

        Raises:
            AdapterNotFoundError: A named adapter is not registered.
            InvalidRequestError: A malformed mix (empty, non-finite or zero weights).
        """
        pairs = _pairs(ref)
        names = tuple(name for name, _ in pairs)
        weights = tuple(weight for _, weight in pairs)
        regs = tuple(self.registration(name) for name in names)
        ids = tuple(self.specs[r].adapter_id for r in regs)
        salt = "+".join(f"{r}*{w!r}" for r, w in zip(regs, weights, strict=True))
        key = regs[0] if isinstance(ref, str) else salt
        return AdapterUse(key, names, weights, ids, salt, regs)


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


def key_registrations(key: str) -> set[str]:
    """The registrations a device-slot key (an :attr:`AdapterUse.key`) holds."""
    # NOTE: names hold no '*', '+' or '#', weights no '#' ("a#1*1e+20+b#2*0.5" parses too)
    return set(re.findall(r"[^*+#]+#\d+", key))
