"""Quality rules and near-duplicate detection for datanet records.

A rule is any object with a ``name`` and a ``check(record, text)`` method that returns
``None`` when the record passes or a reason string when it does not; ``text`` is the
record's searchable text (all string fields joined). Rules run on every contribution, and a
failing record stops the whole contribution with :class:`~openledger.exceptions.QualityError`.

Near-duplicates are handled in :mod:`openledger.data.neardup`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from openledger.data.schemas import Record
from openledger.exceptions import ConfigError

__all__ = [
    "SECRET_PATTERNS",
    "DenyPatternRule",
    "LengthRule",
    "QualityRule",
    "RequiredFieldsRule",
    "record_text",
    "strings_of",
]

SECRET_PATTERNS: dict[str, str] = {
    "private key block": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    "AWS access key id": r"\bAKIA[0-9A-Z]{16}\b",
    "GitHub token": r"\bgh[pousr]_[A-Za-z0-9]{36,}\b",
    "hex private key": r"\b0x[0-9a-fA-F]{64}\b",
    "email address": r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b",
    "US social security number": r"\b\d{3}-\d{2}-\d{4}\b",
}
"""Default deny-list for :class:`DenyPatternRule`: secrets and common PII, by name."""


@runtime_checkable
class QualityRule(Protocol):
    """What a datanet needs from a quality rule."""

    name: str

    def check(self, record: Record, text: str) -> str | None:
        """Return ``None`` if ``record`` passes, else the reason it fails."""


def strings_of(value: object) -> Iterable[str]:
    """Yield every string inside nested dicts, lists and tuples, depth first."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings_of(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from strings_of(item)


def record_text(record: Record) -> str:
    """Return every string field of ``record`` joined by newlines (for rules and MinHash)."""
    return "\n".join(strings_of(record.model_dump(exclude_none=True)))


@dataclass(frozen=True)
class LengthRule:
    """Refuse records whose text (or one field) is shorter or longer than given bounds.

    Args:
        min_chars: Smallest allowed length in characters.
        max_chars: Largest allowed length, or ``None`` for no bound.
        field: Check this string field instead of the whole text.
    """

    min_chars: int = 1
    max_chars: int | None = None
    field: str | None = None
    name: str = "length"

    def check(self, record: Record, text: str) -> str | None:
        """Return why the length is out of bounds, or ``None``."""
        target = text if self.field is None else str(getattr(record, self.field, "") or "")
        where = "text" if self.field is None else f"field {self.field!r}"
        if len(target) < self.min_chars:
            return f"{where} has {len(target)} characters, fewer than min_chars={self.min_chars}"
        if self.max_chars is not None and len(target) > self.max_chars:
            return f"{where} has {len(target)} characters, more than max_chars={self.max_chars}"
        return None


@dataclass(frozen=True)
class RequiredFieldsRule:
    """Refuse records where any of ``fields`` is missing, ``None`` or blank."""

    fields: tuple[str, ...]
    name: str = "required-fields"

    def check(self, record: Record, text: str) -> str | None:
        """Return which required field is empty, or ``None``."""
        for name in self.fields:
            value = getattr(record, name, None)
            if value is None or (isinstance(value, str) and not value.strip()):
                return f"required field {name!r} is missing or blank"
        return None


@dataclass(frozen=True)
class DenyPatternRule:
    """Refuse records whose text matches a deny-listed regular expression.

    Args:
        patterns: ``{description: regex}``; defaults to :data:`SECRET_PATTERNS`.
    """

    patterns: dict[str, str] = field(default_factory=lambda: dict(SECRET_PATTERNS))
    name: str = "deny-patterns"
    _compiled: tuple[tuple[str, re.Pattern[str]], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        try:
            compiled = tuple((k, re.compile(v)) for k, v in self.patterns.items())
        except re.error as exc:
            raise ConfigError(f"DenyPatternRule pattern is not a valid regex: {exc}") from None
        object.__setattr__(self, "_compiled", compiled)

    def check(self, record: Record, text: str) -> str | None:
        """Return which deny-listed pattern matched, or ``None``."""
        for description, pattern in self._compiled:
            if pattern.search(text):
                return f"text matches the deny-listed pattern {description!r}; remove it and retry"
        return None
