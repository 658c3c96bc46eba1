"""Adapter integrity: the id is the hash of the weights served, and config fields are checked.

A manifest whose ``adapter_id`` is not keccak256 of its weights is refused (and never
cached when it came as a download); weights changed after registration are refused at
load; ReDoS-shaped or invalid ``alpha_pattern`` keys, a NaN alpha and out-of-range ranks
are refused with errors naming the field.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import time
from pathlib import Path

import httpx
import pytest

torch = pytest.importorskip("torch")

from tests.serve.serve_lora_factory import make_peft_adapter  # noqa: E402
from tests.serve.test_serve_adapters_security import leftovers  # noqa: E402
from tests.serve.test_serve_adapters_store import new_store  # noqa: E402

from openledger.crypto import keccak256_hex  # noqa: E402
from openledger.exceptions import AdapterFormatError  # noqa: E402
from openledger.models import save_tiny_model  # noqa: E402
from openledger.serve.adapters.lora_config import MAX_ADAPTER_RANK  # noqa: E402


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("base") / "llama", "llama", seed=3)


@pytest.fixture(scope="module")
def pair(base: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("adapters")
    one = make_peft_adapter(base, root / "one", r=4, targets=["q_proj", "v_proj"], seed=1)
    two = make_peft_adapter(base, root / "two", r=4, targets=["q_proj", "v_proj"], seed=2)
    return one, two


def with_manifest(folder: Path, dest: Path, adapter_id: str | None = None) -> Path:
    copy = Path(shutil.copytree(folder, dest))
    weights = (copy / "adapter_model.safetensors").read_bytes()
    manifest = {"adapter_id": adapter_id or keccak256_hex(weights), "base_model": "tiny"}
    (copy / "openledger_manifest.json").write_text(json.dumps(manifest))
    return copy


def test_the_registered_id_is_the_hash_of_the_weights(
    base: Path, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    folder = with_manifest(pair[0], tmp_path / "good")
    spec = new_store(base).add("good", folder)
    weights = (folder / "adapter_model.safetensors").read_bytes()
    assert spec.adapter_id == spec.weights_hash == keccak256_hex(weights)


def test_a_manifest_whose_id_is_not_its_weights_is_refused(
    base: Path, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    other_id = keccak256_hex((pair[1] / "adapter_model.safetensors").read_bytes())
    folder = with_manifest(pair[0], tmp_path / "lying", adapter_id=other_id)
    store = new_store(base)
    with pytest.raises(AdapterFormatError, match=f"adapter_id {other_id} is not the keccak256"):
        store.add("lying", folder)
    assert len(store) == 0


def test_a_downloaded_adapter_with_a_lying_manifest_is_not_cached(
    base: Path, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    folder = with_manifest(pair[0], tmp_path / "lying", adapter_id="0x" + "ab" * 32)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(folder, arcname="lying")
    body = buffer.getvalue()
    client = httpx.Client(
        transport=httpx.MockTransport(lambda r: httpx.Response(200, content=body))
    )
    cache = tmp_path / "cache"
    store = new_store(base, cache_dir=cache, http_client=client)
    with pytest.raises(AdapterFormatError, match="is not the keccak256"):
        store.add("lying", "https://example.org/lying.tar.gz")
    assert leftovers(cache) == []


def test_weights_changed_after_registration_are_refused_at_load(
    base: Path, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    folder = Path(shutil.copytree(pair[0], tmp_path / "swapped"))
    store = new_store(base)
    store.add("swapped", folder)
    shutil.copyfile(pair[1] / "adapter_model.safetensors", folder / "adapter_model.safetensors")
    with pytest.raises(AdapterFormatError, match="changed since adapter 'swapped' was registered"):
        store.load_host("swapped")


def edited(folder: Path, dest: Path, **fields: object) -> Path:
    copy = Path(shutil.copytree(folder, dest))
    config = json.loads((copy / "adapter_config.json").read_text())
    config.update(fields)
    (copy / "adapter_config.json").write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"alpha_pattern": {"(a+)+$": 2.0}}, "repeats a group"),
        ({"alpha_pattern": {"(q|v)*_proj": 2.0}}, "repeats a group"),
        ({"alpha_pattern": {".*.*.*.*.*x": 2.0}}, "more than 4 repeats"),
        ({"alpha_pattern": {r"(\w)\1": 2.0}}, "back-references"),
        ({"alpha_pattern": {"[": 2.0}}, "is no regex"),
        ({"alpha_pattern": {"q" * 300: 2.0}}, "1..256 characters"),
        ({"alpha_pattern": {"q_proj": float("nan")}}, r"alpha_pattern\['q_proj'\] must be finite"),
        ({"alpha_pattern": ["q_proj"]}, "alpha_pattern must be an object"),
        ({"lora_alpha": float("nan")}, "lora_alpha must be finite and > 0"),
        ({"lora_alpha": -2}, "lora_alpha must be finite and > 0"),
        ({"lora_alpha": "8"}, "lora_alpha must be a number"),
        ({"r": MAX_ADAPTER_RANK + 1}, f"r must be a LoRA rank in 1..{MAX_ADAPTER_RANK}"),
        ({"r": 0}, "r must be a LoRA rank"),
    ],
)
def test_config_fields_out_of_range_are_refused(
    base: Path, pair: tuple[Path, Path], tmp_path: Path, fields: dict[str, object], message: str
) -> None:
    folder = edited(pair[0], tmp_path / "bad", **fields)
    started = time.monotonic()
    with pytest.raises(AdapterFormatError, match=message):
        new_store(base).add("bad", folder)
    assert time.monotonic() - started < 5.0  # refused without trying the pattern


def test_safe_alpha_patterns_keep_peft_semantics(
    base: Path, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    folder = edited(
        pair[0],
        tmp_path / "patterned",
        lora_alpha=8,
        alpha_pattern={r"layers\.1\.self_attn\.(q|k)_proj": 2.0, "v_proj": 12.0},
    )
    spec = new_store(base).add("patterned", folder)
    assert spec.scalings["model.layers.1.self_attn.q_proj"] == 2.0 / 4
    assert spec.scalings["model.layers.0.self_attn.q_proj"] == 8.0 / 4
    assert spec.scalings["model.layers.0.self_attn.v_proj"] == 12.0 / 4
