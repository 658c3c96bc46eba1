"""Settings models whose invalid input raises openledger's own errors, naming the field.

Pydantic's ``ValidationError`` is a ``ValueError`` but no :class:`~openledger.exceptions.
OpenLedgerError`, so ``except OpenLedgerError`` would miss it. Settings models derive from
:class:`CheckedModel` and say which error they raise; every one formats the message the
same way (:func:`describe_validation_error`)::

    invalid engine config: engine config field 'block_size': must be a power of two ...
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError
from typing_extensions import Self

from openledger.exceptions import ConfigError

__all__ = ["CheckedModel", "describe_validation_error"]

_SHOWN = 3  # errors named in one message; the rest are counted


def describe_validation_error(error: ValidationError, what: str, model: str = "") -> str:
    """One line naming each invalid field (the first three) and what is wrong with it.

    Args:
        error: Pydantic's error.
        what: What was being validated (``"engine config"``, ``"recipe"``).
        model: The model's class name, named when a field is unknown.
    """
    parts = []
    for item in error.errors()[:_SHOWN]:
        where = ".".join(str(p) for p in item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = f"is not among the {what} fields" + (f" (see {model})" if model else "")
        parts.append(f"{what} field {where!r}: {message}" if where else message)
    more = len(error.errors()) - _SHOWN
    return f"invalid {what}: " + "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


class CheckedModel(BaseModel):
    """A pydantic model that raises :attr:`error` (default :class:`ConfigError`) with a
    message from :func:`describe_validation_error` instead of ``ValidationError``.

    Subclasses set ``error`` and ``what`` as class variables.
    """

    error: ClassVar[type[Exception]] = ConfigError
    what: ClassVar[str] = "settings"

    def __init__(self, **fields: Any) -> None:
        try:
            super().__init__(**fields)
        except ValidationError as exc:
            raise self.error(
                describe_validation_error(exc, self.what, type(self).__name__)
            ) from None

    @classmethod
    def checked(cls, fields: Any) -> Self:
        """``model_validate(fields)`` raising :attr:`error` like the constructor does."""
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise cls.error(describe_validation_error(exc, cls.what, cls.__name__)) from None
