"""merge_adapters against PEFT's add_weighted_adapter, through the store, and bad inputs."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from safetensors.torch import load_file  # noqa: E402
from tests.numerics import (  # noqa: E402
    abs_products,
    assert_rows_close,
    assert_within,
    forward_terms,
    gamma,
)
from tests.serve.serve_lora_factory import make_peft_adapter  # noqa: E402

from openledger.crypto import keccak256_hex  # noqa: E402
from openledger.exceptions import (  # noqa: E402
    AdapterMismatchError,
    AdapterNotFoundError,
    ConfigError,
    InvalidRequestError,
)
from openledger.models import save_tiny_model  # noqa: E402
from openledger.serve import Engine, EngineConfig, SamplingParams, merge_adapters  # noqa: E402
from openledger.serve.adapters import AdapterStore  # noqa: E402
from openledger.serve.layers.lora import LoraState  # noqa: E402
from openledger.serve.models.config import ModelConfig  # noqa: E402
from openledger.serve.ops.lora_torch import LoraWeights, combine_lora_weights  # noqa: E402

WEIGHTS = {"a": 0.7, "b": -0.4}
AB = {"a": 1.0, "b": 1.0}  # b subtracts: signs must survive every combination
SPECS: dict[str, dict[str, Any]] = {
    "a": {"r": 4, "targets": ["q_proj", "v_proj", "down_proj"], "seed": 1},
    "b": {"r": 4, "targets": ["q_proj", "k_proj", "down_proj"], "seed": 2, "use_rslora": True},
    "c": {"r": 6, "targets": ["q_proj", "o_proj", "gate_proj"], "seed": 3, "lora_alpha": 3.0},
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("merge")
    base = save_tiny_model(root / "base", "llama", seed=5)
    folders = {name: make_peft_adapter(base, root / name, **spec) for name, spec in SPECS.items()}
    return {"base": base, "folders": folders, "root": root}


def new_store(setup: dict[str, Any]) -> AdapterStore:
    config = ModelConfig.from_folder(setup["base"])
    names = [
        f"layers.{i}.{m}"
        for i in range(config.num_layers)
        for m in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")
    ]
    store = AdapterStore(
        config, LoraState(names, 2), dtype=torch.float32, device=torch.device("cpu")
    )
    for name, folder in setup["folders"].items():
        store.add(name, folder)
    return store


@pytest.fixture(scope="module")
def store(setup: dict[str, Any]) -> AdapterStore:
    return new_store(setup)


def peft_merge(setup: dict[str, Any], names: list[str], **kwargs: Any) -> dict[str, torch.Tensor]:
    """PEFT's add_weighted_adapter; its merged adapter's tensors, PEFT-file keys."""
    from peft import PeftModel, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(setup["base"], dtype=torch.float32)
    model = PeftModel.from_pretrained(base, setup["folders"][names[0]], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(setup["folders"][name], adapter_name=name)
    seed = kwargs.pop("seed", None)
    lora_model = model.base_model
    original = lora_model._generalized_task_arithmetic_weighted_adapter
    calls = []

    def seeded(*args: Any, **kw: Any) -> Any:
        # NOTE: PEFT draws DARE's masks from the global generator, after initialising the
        # new adapter (which draws too): seed it where the merging itself starts.
        if seed is not None and not calls:
            torch.manual_seed(seed)
        calls.append(1)
        return original(*args, **kw)

    lora_model._generalized_task_arithmetic_weighted_adapter = seeded
    model.add_weighted_adapter(names, [WEIGHTS.get(n, 0.5) for n in names], "merged", **kwargs)
    return get_peft_model_state_dict(model, adapter_name="merged")


def assert_matches_peft(mine: dict[str, torch.Tensor], peft: dict[str, torch.Tensor]) -> None:
    assert set(mine) <= set(peft)
    for key, tensor in peft.items():
        if key in mine:
            # element-wise merges (weights, signs, masks) of two sources: a few roundings of
            # terms no larger than the tensor's largest, in either implementation
            limit = 2 * gamma(8, torch.float32) * float(tensor.abs().max())
            assert_within(mine[key], tensor, limit, msg=f"{key}: ")
        else:  # a layer PEFT injected that no source targets: zeros in PEFT's adapter
            assert not tensor.any(), key


@pytest.mark.parametrize(
    ("combination", "options"),
    [
        ("cat", {}),
        ("linear", {}),
        ("ties", {"density": 0.5}),
        ("ties", {"density": 0.3, "majority_sign_method": "frequency"}),
        ("dare_linear", {"density": 0.6, "seed": 3}),
        ("dare_ties", {"density": 0.5, "seed": 11}),
    ],
)
def test_merge_gives_peft_tensors(
    setup: dict[str, Any],
    store: AdapterStore,
    tmp_path: Path,
    combination: str,
    options: dict[str, Any],
) -> None:
    weights = {"a": WEIGHTS["a"], "b": WEIGHTS["b"]}
    path = merge_adapters(store, weights, tmp_path / "out", combination=combination, **options)  # type: ignore[arg-type]
    mine = load_file(str(path / "adapter_model.safetensors"))
    peft_options = {k: v for k, v in options.items()}
    peft = peft_merge(setup, ["a", "b"], combination_type=combination, **peft_options)
    assert_matches_peft(mine, peft)
    assert any(t.any() for t in mine.values())


def test_dare_depends_on_the_seed_and_keeps_about_density(
    store: AdapterStore, tmp_path: Path
) -> None:
    runs = []
    for seed in (0, 0, 1):
        out = tmp_path / f"s{len(runs)}"
        merge_adapters(store, WEIGHTS, out, combination="dare_linear", density=0.25, seed=seed)
        runs.append(load_file(str(out / "adapter_model.safetensors")))
    key = "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight"  # a alone
    assert torch.equal(runs[0][key], runs[1][key])
    assert not torch.equal(runs[0][key], runs[2][key])

    def kept(projections: tuple[str, ...]) -> float:
        picked = [t for k, t in runs[0].items() if k.split(".")[-3] in projections]
        return torch.cat([(t != 0).float().flatten() for t in picked]).mean().item()

    assert 0.2 < kept(("v_proj", "k_proj")) < 0.3  # one source: density 0.25 kept
    assert 0.38 < kept(("q_proj", "down_proj")) < 0.5  # two: 1 - 0.75**2 = 0.44


def dense_delta(
    weights: LoraWeights, in_features: int, out_features: int, magnitude: bool = False
) -> torch.Tensor:
    """``B A`` of each slice placed in the full weight; with ``magnitude``, ``|B| |A|``."""
    delta = torch.zeros(out_features, in_features, dtype=torch.float64 if magnitude else None)
    for s in weights.slices:
        b, a = s.b.float(), weights.a[s.rank_start : s.rank_end].float()
        if magnitude:
            b, a = b.double().abs(), a.double().abs()
        delta[s.col_start : s.col_end] += b @ a
    return delta


def test_cat_merge_registers_and_equals_the_inference_time_mix(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    store = new_store(setup)
    path = merge_adapters(store, {"a": 0.7, "b": -0.4, "c": 1.5}, tmp_path / "mix")
    spec = store.add("mixed", path)
    assert spec.target_modules == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj"}
    merged = store.load_host("mixed").modules
    members = [(store.load_host(n).modules, w) for n, w in (("a", 0.7), ("b", -0.4), ("c", 1.5))]
    for module, weights in merged.items():
        parts = [(m[module], w) for m, w in members if module in m]
        want = combine_lora_weights(parts)
        in_features = weights.a.shape[1]
        out_features = max(s.col_end for s in weights.slices + want.slices)
        # the same products over concatenated ranks, each B scaled by its weight once
        size = dense_delta(want, in_features, out_features, magnitude=True)
        limit = 2 * gamma(weights.a.shape[0] + 2, torch.float32) * size
        got = dense_delta(weights, in_features, out_features)
        assert_within(got, dense_delta(want, in_features, out_features), limit)
    manifest = json.loads((path / "openledger_manifest.json").read_text())
    assert manifest["format"] == "openledger.merged_adapter/1"
    assert manifest["combination"] == "cat"
    assert [(s["name"], s["weight"]) for s in manifest["sources"]] == [
        ("a", 0.7),
        ("b", -0.4),
        ("c", 1.5),
    ]
    assert manifest["adapter_id"] == keccak256_hex(
        (path / "adapter_model.safetensors").read_bytes()
    )
    config = json.loads((path / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 4 + 4 + 6
    assert not config["use_rslora"]


def test_peft_loads_the_merged_folder_like_its_own_merge(
    setup: dict[str, Any], store: AdapterStore, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    path = merge_adapters(store, {"a": 0.7, "c": 1.5}, tmp_path / "ac")
    base = AutoModelForCausalLM.from_pretrained(setup["base"], dtype=torch.float32)
    ids = torch.tensor([[5, 17, 99, 3, 42, 8]])
    with torch.no_grad():
        plain = base(ids).logits
        loaded = PeftModel.from_pretrained(base, path).eval()
        mine = loaded(ids).logits
    base = AutoModelForCausalLM.from_pretrained(setup["base"], dtype=torch.float32)
    reference = PeftModel.from_pretrained(base, setup["folders"]["a"], adapter_name="a")
    reference.load_adapter(setup["folders"]["c"], adapter_name="c")
    reference.add_weighted_adapter(["a", "c"], [0.7, 1.5], "m", combination_type="cat")
    reference.set_adapter("m")
    with torch.no_grad():
        want = reference.eval()(ids).logits
    # two float32 forward passes of the tiny model, then the head over the hidden size
    config = base.config
    terms = forward_terms(config, ids.shape[1]) + config.hidden_size
    assert_rows_close(mine[0], want[0], dtype=torch.float32, terms=terms)
    assert not torch.allclose(mine, plain, atol=1e-3)


def test_engine_serves_the_merge_like_the_per_request_mix(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    engine = Engine(setup["base"], EngineConfig(max_num_seqs=4, block_size=4, num_blocks=64))
    for name, folder in setup["folders"].items():
        engine.add_adapter(name, folder)
    assert engine.adapters is not None
    path = merge_adapters(engine.adapters, {"a": 0.7, "c": 1.5}, tmp_path / "m")
    engine.add_adapter("merged", path)
    via_engine = engine.merge_adapters("merged2", {"a": 0.7, "c": 1.5}, output_dir=tmp_path / "e")
    assert via_engine == tmp_path / "e"
    assert "merged2" in engine.adapters
    prompt = [3, 14, 15, 92, 65, 35]
    params = [
        SamplingParams(max_tokens=6, min_tokens=6, adapter=choice)
        for choice in ("merged", "merged2", {"a": 0.7, "c": 1.5}, None)
    ]
    merged, merged2, mixed, plain = engine.generate([prompt] * 4, params)
    assert merged.token_ids == merged2.token_ids == mixed.token_ids
    assert merged.token_ids != plain.token_ids
    # adapter= is shorthand for SamplingParams(adapter=...)
    short = SamplingParams(max_tokens=6, min_tokens=6)
    assert engine.generate(prompt, short, adapter="merged2")[0].token_ids == merged.token_ids
    streamed = "".join(engine.stream(prompt, short, adapter={"a": 0.7, "c": 1.5}))
    assert streamed == mixed.text
    with pytest.raises(InvalidRequestError, match="contradicts"):
        engine.generate(prompt, params[0], adapter="merged2")
    with pytest.raises(ConfigError, match="is registered"):
        engine.merge_adapters("merged2", {"a": 1.0}, output_dir=tmp_path / "x")
    with pytest.raises(ConfigError, match="without"):
        engine.merge_adapters("bad*name", {"a": 1.0}, output_dir=tmp_path / "y")
    assert not (tmp_path / "x").exists()
    assert not (tmp_path / "y").exists()


def test_one_source_is_a_linear_merge(store: AdapterStore, tmp_path: Path) -> None:
    path = merge_adapters(store, {"c": 2.0}, tmp_path / "one", combination="ties", density=0.5)
    manifest = json.loads((path / "openledger_manifest.json").read_text())
    assert manifest["combination"] == "linear"
    spec = store.spec("c")
    mine = load_file(str(path / "adapter_model.safetensors"))
    source = load_file(str(spec.folder / "adapter_model.safetensors"))
    module = "model.layers.1.self_attn.o_proj"
    key = f"base_model.model.{module}"
    delta = mine[f"{key}.lora_B.weight"] @ mine[f"{key}.lora_A.weight"]
    b, a = source[f"{key}.lora_B.weight"], source[f"{key}.lora_A.weight"]
    scale = 2.0 * spec.scalings[module]
    want = scale * b @ a
    limit = 2 * gamma(a.shape[0] + 3, torch.float32) * abs(scale) * abs_products(b, a.T)
    assert_within(delta, want, limit)


@pytest.mark.parametrize(
    ("weights", "options", "error", "match"),
    [
        ({}, {}, ConfigError, "non-empty"),
        ({"a": 1.0, "nope": 1.0}, {}, AdapterNotFoundError, "nope"),
        ({"a": 1.0, "c": 1.0}, {"combination": "linear"}, AdapterMismatchError, "equal ranks"),
        (AB, {"combination": "ties"}, ConfigError, "needs a density"),
        (AB, {"combination": "dare_linear", "density": -0.1}, ConfigError, "density"),
        (AB, {"combination": "dare_ties", "density": 1.5}, ConfigError, "density"),
        (AB, {"combination": "cat", "density": 0.5}, ConfigError, "density applies"),
        (AB, {"combination": "svd"}, ConfigError, "unknown combination"),
        (AB, {"combination": "ties", "density": 0.5, "majority_sign_method": "max"}, ConfigError,
         "majority_sign"),
        ({"a": math.nan}, {}, ConfigError, "finite"),
        ({"a": "0.5"}, {}, ConfigError, "number"),
    ],
)  # fmt: skip
def test_bad_merges_are_refused(
    store: AdapterStore,
    tmp_path: Path,
    weights: dict[str, Any],
    options: dict[str, Any],
    error: type[Exception],
    match: str,
) -> None:
    out = tmp_path / "out"
    with pytest.raises(error, match=match):
        merge_adapters(store, weights, out, **options)
    assert not out.exists()


def test_output_must_be_new_and_bases_must_agree(setup: dict[str, Any], tmp_path: Path) -> None:
    store = new_store(setup)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not an empty folder"):
        merge_adapters(store, {"a": 1.0}, taken)
    assert (taken / "notes.txt").read_text() == "keep me"
    for name, digest in (("x", "0x" + "11" * 32), ("y", "0x" + "22" * 32)):
        folder = shutil.copytree(setup["folders"]["a"], tmp_path / name)
        manifest = {"base_model": "tiny", "base_model_weights_hash": digest}
        (folder / "openledger_manifest.json").write_text(json.dumps(manifest))
        store.add(name, folder)
    with pytest.raises(AdapterMismatchError, match="different base weights"):
        merge_adapters(store, {"x": 1.0, "y": 1.0}, tmp_path / "xy")
    path = merge_adapters(store, {"x": 1.0, "a": 1.0}, tmp_path / "xa")
    manifest = json.loads((path / "openledger_manifest.json").read_text())
    assert manifest["base_model_weights_hash"] == "0x" + "11" * 32
