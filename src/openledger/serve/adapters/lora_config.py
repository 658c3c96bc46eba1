"""Reading ``adapter_config.json``: the fields the engine uses, each validated once.

An adapter's config comes from whoever published it, so nothing in it is trusted:

* ``lora_alpha`` and ``alpha_pattern`` values must be finite numbers > 0;
* ``r`` (and every rank found in the weights) must be in ``1..MAX_ADAPTER_RANK``;
* ``use_dora`` is served (the magnitude vectors come with the weights); ``modules_to_save``
  may name ``lm_head`` and ``embed_tokens`` only (:data:`SAVED_MODULES`), the modules the
  engine keeps per-adapter copies of; biases (``bias``, ``lora_bias``) are refused;
* ``alpha_pattern`` keys are regular expressions (as in PEFT) and are refused unless they
  are short (``MAX_PATTERN_LENGTH``), few (``MAX_PATTERNS``) and of a shape whose matching
  time is bounded: no group, alternation or repeat inside a repeat, at most
  ``MAX_PATTERN_REPEATS`` repeats, no back-references or look-arounds.
"""

from __future__ import annotations

import json
import math
import re
import re._parser as sre_parse  # type: ignore[import-not-found,unused-ignore]
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openledger.exceptions import AdapterFormatError
from openledger.serve.adapters.sources import ADAPTER_CONFIG_FILE

__all__ = [
    "MAX_ADAPTER_RANK",
    "MAX_PATTERNS",
    "MAX_PATTERN_LENGTH",
    "MAX_PATTERN_REPEATS",
    "SAVED_MODULES",
    "LoraOptions",
    "read_lora_options",
]

MAX_ADAPTER_RANK = 1024
"""Largest LoRA rank served (PEFT adapters rarely exceed 256)."""
MAX_PATTERNS = 256
"""Most ``alpha_pattern`` entries in one config."""
MAX_PATTERN_LENGTH = 256
"""Longest ``alpha_pattern`` key, in characters."""
MAX_PATTERN_REPEATS = 4
"""Most repeat operators (``*``, ``+``, ``?``, ``{m,n}``) in one ``alpha_pattern`` key."""
SAVED_MODULES = ("embed_tokens", "lm_head")
"""The ``modules_to_save`` the engine serves (per-adapter copies of the embedding and head)."""

_SINGLE_CHARACTER = {"LITERAL", "NOT_LITERAL", "IN", "ANY", "CATEGORY"}
_REPEATS = {"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"}
_REFUSED = {"GROUPREF", "GROUPREF_EXISTS", "ASSERT", "ASSERT_NOT"}


@dataclass(frozen=True, slots=True)
class LoraOptions:
    """The config fields that decide an adapter's scalings.

    Attributes:
        alpha: ``lora_alpha``.
        patterns: ``alpha_pattern`` compiled, in config order (first match wins).
        use_rslora: Scale by ``alpha / sqrt(r)`` instead of ``alpha / r``.
        use_dora: A DoRA adapter (a magnitude vector per targeted module).
        modules_to_save: Which of :data:`SAVED_MODULES` the adapter saves whole copies of
            (as the config lists them; the weights file decides what is there).
        ensure_weight_tying: PEFT kept the copies of tied ``embed_tokens`` and ``lm_head``
            tied (it then saves both).
    """

    alpha: float
    patterns: tuple[tuple[re.Pattern[str], float], ...]
    use_rslora: bool
    use_dora: bool = False
    modules_to_save: frozenset[str] = frozenset()
    ensure_weight_tying: bool = False

    def scaling(self, module: str, rank: int) -> float:
        """The scaling of ``module`` (``model.layers.0.self_attn.q_proj``) at ``rank``."""
        alpha = self.alpha
        suffixes = [module.split(".", i)[-1] for i in range(module.count(".") + 1)]
        for pattern, value in self.patterns:  # PEFT: the key matches the name or a dotted suffix
            if any(pattern.fullmatch(suffix) for suffix in suffixes):
                alpha = value
                break
        return alpha / (math.sqrt(rank) if self.use_rslora else rank)


def read_lora_options(folder: Path) -> LoraOptions:
    """Read and validate ``folder/adapter_config.json``.

    Raises:
        AdapterFormatError: Unreadable, not a LoRA, with biases, ``modules_to_save``
            naming another module than ``lm_head``/``embed_tokens``, or a field out of
            range; the message names the field.
    """
    config = _read_json(folder / ADAPTER_CONFIG_FILE)
    where = f"{folder / ADAPTER_CONFIG_FILE}"
    rank = config.get("r")
    if rank is not None:
        check_rank(rank, f"{where}: r")
    patterns = config.get("alpha_pattern") or {}
    if not isinstance(patterns, Mapping) or len(patterns) > MAX_PATTERNS:
        raise AdapterFormatError(
            f"{where}: alpha_pattern must be an object of at most {MAX_PATTERNS} entries"
        )
    compiled = tuple(
        (_safe_pattern(key, where), _positive(value, f"{where}: alpha_pattern[{key!r}]"))
        for key, value in patterns.items()
    )
    alpha = _positive(config.get("lora_alpha", 8), f"{where}: lora_alpha")
    return LoraOptions(
        alpha,
        compiled,
        bool(config.get("use_rslora", False)),
        use_dora=bool(config.get("use_dora", False)),
        modules_to_save=_saved_modules(config.get("modules_to_save"), where),
        ensure_weight_tying=bool(config.get("ensure_weight_tying", False)),
    )


def _saved_modules(value: object, where: str) -> frozenset[str]:
    """``modules_to_save`` as the served module names, or a refusal naming the module."""
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AdapterFormatError(f"{where}: modules_to_save must be a list of module names")
    saved = set()
    for name in value:  # NOTE: PEFT may write "model.embed_tokens" (ensure_weight_tying)
        module = name.rsplit(".", 1)[-1]
        if module not in SAVED_MODULES:
            raise AdapterFormatError(
                f"{where}: modules_to_save names {name!r}; the engine serves copies of "
                f"{' and '.join(SAVED_MODULES)} only"
            )
        saved.add(module)
    return frozenset(saved)


def check_rank(rank: object, what: str) -> int:
    """``rank`` if it is an int in ``1..MAX_ADAPTER_RANK``.

    Raises:
        AdapterFormatError: Otherwise (``what`` names the field).
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= MAX_ADAPTER_RANK:
        raise AdapterFormatError(
            f"{what} must be a LoRA rank in 1..{MAX_ADAPTER_RANK}, got {rank!r}"
        )
    return rank


def _read_json(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdapterFormatError(f"{path} is unreadable: {exc}") from exc
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        raise AdapterFormatError(
            f"{path.parent} is not a PEFT LoRA adapter (peft_type must be LORA)"
        )
    refused = {
        "bias": config.get("bias", "none") not in ("none", None),
        "lora_bias": bool(config.get("lora_bias")),
    }
    for field_name, present in refused.items():
        if present:
            raise AdapterFormatError(
                f"{path.parent}: adapters with {field_name} are not served; train without biases"
            )
    return config


def _positive(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AdapterFormatError(f"{what} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise AdapterFormatError(f"{what} must be finite and > 0, got {value!r}")
    return float(value)


def _safe_pattern(key: object, where: str) -> re.Pattern[str]:
    """Compile an ``alpha_pattern`` key whose matching time is bounded, or refuse it."""
    if not isinstance(key, str) or not 0 < len(key) <= MAX_PATTERN_LENGTH:
        raise AdapterFormatError(
            f"{where}: alpha_pattern key {str(key)[:40]!r} must be a string of "
            f"1..{MAX_PATTERN_LENGTH} characters"
        )
    try:
        parsed = sre_parse.parse(key)
        if _count_repeats(parsed, key, where) > MAX_PATTERN_REPEATS:
            raise AdapterFormatError(
                f"{where}: alpha_pattern key {key!r} has more than {MAX_PATTERN_REPEATS} repeats"
            )
        return re.compile(key)
    except (re.error, RecursionError, OverflowError) as exc:
        raise AdapterFormatError(f"{where}: alpha_pattern key {key!r} is no regex: {exc}") from exc


def _count_repeats(items: Any, key: str, where: str) -> int:
    """Repeats in a parsed pattern, refusing nested ones and unbounded-time constructs."""
    count = 0
    for op, arg in items:
        name = str(op)
        if name in _REFUSED:
            raise AdapterFormatError(
                f"{where}: alpha_pattern key {key!r} uses back-references or look-arounds"
            )
        if name in _REPEATS:
            body = list(arg[2])
            if any(str(inner) not in _SINGLE_CHARACTER for inner, _ in body):
                raise AdapterFormatError(
                    f"{where}: alpha_pattern key {key!r} repeats a group, alternation or "
                    "repeat (its matching time could explode); repeat single characters only"
                )
            count += 1
        elif name == "SUBPATTERN":
            count += _count_repeats(arg[3], key, where)
        elif name == "ATOMIC_GROUP":
            count += _count_repeats(arg, key, where)
        elif name == "BRANCH":
            count += sum(_count_repeats(branch, key, where) for branch in arg[1])
    return count
