"""openledger: payable, attributable AI.

Layers are imported as subpackages (``openledger.models``, and as they land
``openledger.data``, ``openledger.chain``, ``openledger.train``, ``openledger.serve``,
``openledger.attribution``, ``openledger.gateway``); they load lazily so that
``import openledger`` stays cheap and a torch-free layer never pulls torch in.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from openledger._version import __version__
from openledger.exceptions import OpenLedgerError

if TYPE_CHECKING:
    from openledger import attribution as attribution
    from openledger import chain as chain
    from openledger import crypto as crypto
    from openledger import data as data
    from openledger import gateway as gateway
    from openledger import models as models
    from openledger import serve as serve
    from openledger import train as train

__all__ = [
    "OpenLedgerError",
    "__version__",
    "attribution",
    "chain",
    "crypto",
    "data",
    "gateway",
    "models",
    "serve",
    "train",
]

_LAYERS = frozenset(
    {"attribution", "chain", "crypto", "data", "gateway", "models", "serve", "train"}
)


def __getattr__(name: str) -> Any:
    # NOTE: PEP 562 lazy import so `ol.models` works without an explicit import.
    if name in _LAYERS:
        module = importlib.import_module(f"openledger.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'openledger' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAYERS)
