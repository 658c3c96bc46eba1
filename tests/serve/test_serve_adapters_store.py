"""Adapter store: loading PEFT folders, refusals, tiers, slots and weighted mixes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tests.numerics import assert_within_rounding  # noqa: E402
from tests.serve.serve_lora_factory import make_peft_adapter  # noqa: E402
from tests.serve.test_serve_lora_ops import delta_bound, groups_of  # noqa: E402

from openledger.exceptions import (  # noqa: E402
    AdapterCapacityError,
    AdapterFormatError,
    AdapterMismatchError,
    AdapterNotFoundError,
    ConfigError,
    InvalidRequestError,
)
from openledger.models import save_tiny_model  # noqa: E402
from openledger.serve.adapters import AdapterStore  # noqa: E402
from openledger.serve.layers.lora import LoraState  # noqa: E402
from openledger.serve.models.config import ModelConfig  # noqa: E402
from openledger.serve.ops.lora_torch import add_lora  # noqa: E402

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("base") / "llama", "llama", seed=3)


@pytest.fixture(scope="module")
def adapters(base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "all8": make_peft_adapter(base, root / "all8", r=8, targets=ALL, seed=1),
        "qv4": make_peft_adapter(base, root / "qv4", r=4, targets=["q_proj", "v_proj"], seed=2),
        "rs": make_peft_adapter(
            base,
            root / "rs",
            r=6,
            targets=["k_proj", "down_proj"],
            seed=3,
            use_rslora=True,
            alpha_pattern={"down_proj": 3.0},
        ),
    }


def new_store(base: Path, num_slots: int = 4, **kwargs: object) -> AdapterStore:
    config = ModelConfig.from_folder(base)
    names = [
        f"layers.{i}.{m}"
        for i in range(config.num_layers)
        for m in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")
    ]
    state = LoraState(names, num_slots)
    return AdapterStore(
        config,
        state,
        dtype=torch.float32,
        device=torch.device("cpu"),
        **kwargs,  # type: ignore[arg-type]
    )


def peft_delta(
    folder: Path, module: str, x: torch.Tensor, scaling: float, magnitude: bool = False
) -> torch.Tensor:
    """PEFT's update ``scaling x A^T B^T``; with ``magnitude``, over absolute values in
    float64 (what its float32 rounding is proportional to)."""
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "adapter_model.safetensors"))
    a = tensors[f"base_model.model.model.{module}.lora_A.weight"]
    b = tensors[f"base_model.model.model.{module}.lora_B.weight"]
    if magnitude:
        x, a, b, scaling = x.double().abs(), a.double().abs(), b.double().abs(), abs(scaling)
    return (x @ a.T @ b.T) * scaling


def assert_delta_close(
    got: torch.Tensor, folder: Path, module: str, x: torch.Tensor, scaling: float
) -> None:
    """Our update within float32 rounding (shrink over hidden, expand over rank) of PEFT's."""
    want = peft_delta(folder, module, x, scaling)
    size = peft_delta(folder, module, x, scaling, magnitude=True)
    # the shrink over hidden, the expand over the rank (these adapters' ranks are <= 64)
    assert_within_rounding(got, want, bound=size, dtype=torch.float32, terms=x.shape[1] + 64)


def our_delta(store: AdapterStore, name: str, fused: str, x: torch.Tensor) -> torch.Tensor:
    weights = store.load_host(name).modules[fused]
    out_size = max(s.col_end for s in weights.slices)
    out = torch.zeros(x.shape[0], out_size + 64)
    add_lora(out, x, groups_of(torch.zeros(x.shape[0], dtype=torch.int64)), [weights])
    return out


def test_slices_and_scalings_match_peft(base: Path, adapters: dict[str, Path]) -> None:
    store = new_store(base)
    spec = store.add("rs", adapters["rs"])
    assert spec.target_modules == {"k_proj", "down_proj"}
    assert spec.scalings["model.layers.0.self_attn.k_proj"] == pytest.approx(12 / 6**0.5)
    assert spec.scalings["model.layers.1.mlp.down_proj"] == pytest.approx(3.0 / 6**0.5)
    store.add("qv4", adapters["qv4"])
    config = store.config
    x = torch.randn(5, config.hidden_size)
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    got = our_delta(store, "qv4", "layers.1.self_attn.qkv_proj", x)
    assert_delta_close(got[:, :q], adapters["qv4"], "layers.1.self_attn.q_proj", x, 2.0)
    assert not got[:, q : q + kv].any()  # k is not targeted
    got_v = got[:, q + kv : q + 2 * kv]
    assert_delta_close(got_v, adapters["qv4"], "layers.1.self_attn.v_proj", x, 2.0)
    got_k = our_delta(store, "rs", "layers.0.self_attn.qkv_proj", x)[:, q : q + kv]
    assert_delta_close(got_k, adapters["rs"], "layers.0.self_attn.k_proj", x, 12 / 6**0.5)


def test_pickle_corrupt_and_foreign_adapters_are_refused(
    base: Path, adapters: dict[str, Path], tmp_path: Path
) -> None:
    store = new_store(base)
    pickled = make_peft_adapter(base, tmp_path / "pkl", r=2, targets=["q_proj"], seed=4, safe=False)
    with pytest.raises(AdapterFormatError, match="pickle"):
        store.add("pkl", pickled)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "adapter_config.json").write_text(
        (adapters["qv4"] / "adapter_config.json").read_text()
    )
    (corrupt / "adapter_model.safetensors").write_bytes(
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json"
    )
    with pytest.raises(AdapterFormatError, match="not a readable safetensors"):
        store.add("corrupt", corrupt)
    truncated = (adapters["all8"] / "adapter_model.safetensors").read_bytes()[:-100]
    (corrupt / "adapter_model.safetensors").write_bytes(truncated)
    with pytest.raises(AdapterFormatError):
        store.add("truncated", corrupt)
    wider = save_tiny_model(tmp_path / "wider", "llama", seed=1, hidden_size=96)
    foreign = make_peft_adapter(wider, tmp_path / "foreign", r=2, targets=["o_proj"], seed=5)
    with pytest.raises(AdapterMismatchError, match="shape"):
        store.add("foreign", foreign)
    score = make_peft_adapter(base, tmp_path / "score", r=2, targets=["q_proj"], seed=6)
    config_path = score / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["modules_to_save"] = ["score"]
    config_path.write_text(json.dumps(config))
    with pytest.raises(AdapterFormatError, match="modules_to_save names 'score'"):
        store.add("score", score)
    with pytest.raises(AdapterNotFoundError, match="no folder"):
        store.add("missing", tmp_path / "nowhere")
    assert len(store) == 0  # nothing half-registered


def test_manifest_for_other_base_weights_is_refused(
    base: Path, adapters: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    from openledger.crypto import keccak256_hex

    folder = Path(shutil.copytree(adapters["qv4"], tmp_path / "with-manifest"))
    adapter_id = keccak256_hex((folder / "adapter_model.safetensors").read_bytes())
    manifest = {"adapter_id": adapter_id, "base_model": "other",
                "base_model_weights_hash": "0x" + "11" * 32}  # fmt: skip
    (folder / "openledger_manifest.json").write_text(json.dumps(manifest))
    calls: list[int] = []

    def base_hash() -> str:
        calls.append(1)
        return "0x" + "22" * 32

    store = new_store(base, base_weights_hash=base_hash)
    with pytest.raises(AdapterMismatchError, match="trained on base model 'other'"):
        store.add("m", folder)
    manifest["base_model_weights_hash"] = "0x" + "22" * 32
    (folder / "openledger_manifest.json").write_text(json.dumps(manifest))
    assert store.add("m", folder).adapter_id == adapter_id
    store.add("plain", adapters["qv4"])
    assert calls == [1]  # hashed once, only for adapters with a manifest


def test_names_and_mixes_are_validated(base: Path, adapters: dict[str, Path]) -> None:
    store = new_store(base)
    store.add("a", adapters["qv4"])
    with pytest.raises(ConfigError, match="registered"):
        store.add("a", adapters["qv4"])
    with pytest.raises(ConfigError, match="name"):
        store.add("a+b", adapters["qv4"])
    with pytest.raises(AdapterNotFoundError, match="'zz'"):
        store.resolve("zz")
    with pytest.raises(AdapterNotFoundError):
        store.resolve({"a": 0.5, "zz": 0.5})
    for bad in ({}, {"a": float("nan")}, {"a": 0}, {"a": "1"}):
        with pytest.raises(InvalidRequestError):
            store.resolve(bad)  # type: ignore[arg-type]
    use = store.resolve({"a": 0.7})
    assert use.key == "a#1*0.7"
    assert store.resolve("a").cache_salt != use.cache_salt


def test_slots_evict_lru_and_mixes_are_exact(base: Path, adapters: dict[str, Path]) -> None:
    store = new_store(base, num_slots=2)
    for name in ("all8", "qv4", "rs"):
        store.add(name, adapters[name])
    mix = store.resolve({"all8": 0.7, "qv4": -0.3})
    assert mix.names == ("all8", "qv4")
    single = store.resolve("rs")
    slot_mix, slot_single = store.acquire(mix), store.acquire(single)
    assert {slot_mix, slot_single} == {0, 1}
    with pytest.raises(AdapterCapacityError):
        store.acquire(store.resolve("qv4"))  # both slots pinned
    store.release(single)
    assert store.acquire(store.resolve("qv4")) == slot_single  # "rs" evicted
    assert store.slots.resident() == [mix.key, "qv4#2"]
    fused = "layers.0.self_attn.qkv_proj"
    x = torch.randn(3, store.config.hidden_size)
    groups = groups_of(torch.full((3,), slot_mix))
    config = store.config
    width = (config.num_heads + 2 * config.num_kv_heads) * config.head_dim
    got = torch.zeros(3, width)
    add_lora(got, x, groups, store.state.slots[fused])
    want = 0.7 * our_delta(store, "all8", fused, x) - 0.3 * our_delta(store, "qv4", fused, x)
    zeros = torch.zeros(3, dtype=torch.int64)
    size = sum(
        abs(w) * delta_bound(x, [store.load_host(n).modules[fused]], zeros, width)
        for n, w in (("all8", 0.7), ("qv4", -0.3))
    )
    # one mixed update against two: B scaled by its weight, both sums, the combination
    assert_within_rounding(
        got, want[:, :width], bound=size, dtype=torch.float32, terms=x.shape[1] + 64
    )
    store.release(mix)
    store.remove("all8")
    assert store.slots.resident() == ["qv4#2"]
    assert store.state.slots[fused][slot_mix] is None


def test_thousand_registered_with_bounded_host_memory(
    base: Path, adapters: dict[str, Path]
) -> None:
    one = new_store(base)
    one.add("x", adapters["all8"])
    size = one.load_host("x").num_bytes
    store = new_store(base, num_slots=4, max_host_bytes=5 * size)
    for i in range(1000):
        store.add(f"a{i}", adapters["all8"])
    for i in range(0, 1000, 37):
        use = store.resolve(f"a{i}")
        store.acquire(use)
        store.release(use)
    assert len(store) == 1000
    assert store.host_bytes <= 5 * size
    assert len(store.slots.resident()) == 4


def count_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the adapters the store reads from disk from now on, in order."""
    from openledger.serve.adapters import store as store_module

    reads: list[str] = []
    real = store_module.load_adapter

    def counting(spec, *args):  # type: ignore[no-untyped-def]
        reads.append(spec.name)
        return real(spec, *args)

    monkeypatch.setattr(store_module, "load_adapter", counting)
    return reads


def host_size(base: Path, folder: Path) -> int:
    """Bytes one host copy of the adapter in ``folder`` takes."""
    one = new_store(base)
    one.add("x", folder)
    return one.load_host("x").num_bytes


def test_prefetch_reads_only_adapters_not_in_a_slot(
    base: Path, adapters: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = count_reads(monkeypatch)
    size = host_size(base, adapters["all8"])
    store = new_store(base, num_slots=2, max_host_bytes=size)  # room for one host copy
    for name in ("all8", "qv4"):
        store.add(name, adapters[name])
    reads.clear()
    store.prefetch(store.resolve("all8"))
    store.acquire(use := store.resolve("all8"))
    store.release(use)
    assert reads == ["all8"]  # read once: the prefetch's copy served the slot
    store.prefetch(store.resolve("qv4"))  # pushes all8's host copy out
    assert reads == ["all8", "qv4"]
    store.prefetch(store.resolve("all8"))  # in its slot: nothing read
    assert reads == ["all8", "qv4"]
    store.prefetch(store.resolve({"all8": 0.5, "qv4": 0.5}))  # the mix is in no slot
    assert reads == ["all8", "qv4", "all8", "qv4"]  # one host copy fits: each pushes out the other
    with pytest.raises(AdapterNotFoundError):
        store.prefetch(store.resolve("nope"))


def test_warm_reads_adapters_ahead_while_the_host_budget_holds_them(
    base: Path, adapters: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = count_reads(monkeypatch)
    size = host_size(base, adapters["all8"])
    store = new_store(base, max_host_bytes=2 * size + size // 2)  # room for two
    for i in range(5):
        store.add(f"a{i}", adapters["all8"])
    reads.clear()
    # NOTE: the third read pushes the first out: warming stops there, not at the fifth
    assert store.warm([f"a{i}" for i in range(5)]) == ["a1", "a2"]
    assert reads == ["a0", "a1", "a2"]
    assert [store.in_host(f"a{i}") for i in range(5)] == [False, True, True, False, False]
    assert store.host_bytes <= 2 * size + size // 2
    reads.clear()
    store.prefetch(store.resolve("a1"))  # a first request: nothing read
    assert reads == []
    roomy = new_store(base)
    for name, folder in adapters.items():
        roomy.add(name, folder)
    assert roomy.warm(list(adapters)) == list(adapters)
    with pytest.raises(AdapterNotFoundError):
        roomy.warm(["nobody"])
