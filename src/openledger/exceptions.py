"""Every error openledger raises on purpose.

Each layer has its own base class, and each concrete error also subclasses the builtin
it resembles, so ``except ValueError`` or ``except LookupError`` written against plain
Python keeps working, while ``except OpenLedgerError`` catches everything of ours::

    OpenLedgerError
    ├── ConfigError(ValueError)             a setting or argument is out of range or malformed
    ├── MissingDependencyError(ImportError) an optional extra or package is not installed
    └── ModelError                          base models (openledger.models)
        ├── UnknownModelError(LookupError)  a name is no folder, alias or hub id
        ├── ModelNotAvailableError(OSError) known, but its files cannot be had here
        │                                   (offline and not cached, package missing ...)
        └── ModelCacheError(OSError)        a converted cache is unusable and cannot be rebuilt

Messages say what was wrong and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "MissingDependencyError",
    "ModelCacheError",
    "ModelError",
    "ModelNotAvailableError",
    "OpenLedgerError",
    "UnknownModelError",
]


class OpenLedgerError(Exception):
    """Root of every error openledger raises on purpose."""


class ConfigError(OpenLedgerError, ValueError):
    """A setting or argument is out of range or malformed."""


class MissingDependencyError(OpenLedgerError, ImportError):
    """An optional dependency is missing; the message names what to install."""


class ModelError(OpenLedgerError):
    """Base class for errors of :mod:`openledger.models`."""


class UnknownModelError(ModelError, LookupError):
    """The name is neither a local folder, a known alias nor a Hugging Face hub id."""


class ModelNotAvailableError(ModelError, OSError):
    """The model is known but its files cannot be had on this machine.

    Raised for an offline alias whose package is not installed, or a hub id that is not in
    the local cache while offline (or cannot be downloaded).
    """


class ModelCacheError(ModelError, OSError):
    """A converted model cache is unusable and rebuilding it failed."""
