"""End to end with DoRA: a datanet -> ``openledger.train`` (``use_dora=True``) -> the engine
serves the adapter itself (not a merged model) -> the answer is attributed to the
contributor who taught it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from tests.attribution.conftest import colour_records, make_snapshot, train  # noqa: E402

from openledger.attribution import attribute  # noqa: E402
from openledger.crypto import Account  # noqa: E402
from openledger.data import InstructionRecord  # noqa: E402
from openledger.serve import Engine, EngineConfig, SamplingParams  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread: None) -> None:
    """Tiny models run fastest on one torch thread here (see tests/conftest.py)."""


def test_dora_adapter_trained_served_and_attributed(
    memorising_llama_dir: Path, tmp_path: Path
) -> None:
    accounts = [Account.create() for _ in range(3)]
    fact = [
        InstructionRecord(instruction="Code plum?", response="PLUM ok."),
        InstructionRecord(instruction="code plum!", response="PLUM ok."),
    ]
    groups = [fact, colour_records(["red", "blue"]), colour_records(["gold", "teal"])]
    snapshot = make_snapshot(tmp_path / "dn", groups, accounts)
    run = train(
        memorising_llama_dir,
        snapshot,
        tmp_path / "adapter",
        max_steps=150,
        learning_rate=2e-2,
        use_dora=True,
    )
    config = json.loads((run.adapter.path / "adapter_config.json").read_text())
    assert config["use_dora"] is True
    engine = Engine(memorising_llama_dir, EngineConfig(max_num_seqs=2))
    spec = engine.add_adapter("plum", run.adapter.path)
    assert spec.use_dora
    assert spec.adapter_id is not None  # NOTE: the manifest's id, checked against the weights
    messages = [{"role": "user", "content": "Code plum?"}]
    answer = engine.generate(messages, SamplingParams(max_tokens=8, adapter="plum"))[0]
    text = answer.text.strip()
    assert text.startswith("PLUM ok")
    assert answer.usage is not None
    assert answer.usage.adapter_ids == (spec.adapter_id,)
    report = attribute(run.adapter, snapshot, prompt="Code plum?", completion=text)
    shares = report.contributor_shares()
    assert max(shares, key=shares.__getitem__) == accounts[0].address
