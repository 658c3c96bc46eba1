"""The README-level walkthrough through the installed `openledger` command only: keys, a
datanet, a JSONL contribution, a snapshot, training from a YAML recipe, chat with the
adapter, attributing its answer; private-datanet access; bad input stores nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml


def openledger(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("openledger")
    if exe is None:
        pytest.fail("the `openledger` console script is not on PATH; is the package installed?")
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [exe, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    if ok and done.returncode != 0:
        pytest.fail(f"openledger {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    return done


def result(*args: str, cwd: Path) -> Any:
    return json.loads(openledger(*args, cwd=cwd).stdout)


ROWS = [
    {"instruction": f"Code {word}?", "response": f"{word.upper()} ok."}
    for word in ("red", "blue", "green", "gold", "pink", "gray", "teal", "navy")
]


def test_the_walkthrough_runs_through_the_command(tmp_path: Path, tiny_llama_dir: Path) -> None:
    alice = result("account", "new", "alice.key", cwd=tmp_path)
    assert (tmp_path / "alice.key").stat().st_mode & 0o777 == 0o600
    assert result("account", "address", "alice.key", cwd=tmp_path) == {"address": alice["address"]}
    result(
        "datanet", "create", "facts", "--name", "facts", "--owner-key", "alice.key", cwd=tmp_path
    )
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    added = result(
        "datanet", "contribute", "facts", "rows.jsonl", "--key", "alice.key", cwd=tmp_path
    )
    assert (added["records"], added["contributor"]) == (len(ROWS), alice["address"])
    snap = result("datanet", "snapshot", "facts", cwd=tmp_path)
    assert (snap["snapshot_id"], snap["records"]) == (1, len(ROWS))
    recipe = {
        "base_model": str(tiny_llama_dir),
        "r": 4,
        "alpha": 8,
        "target_modules": ["q_proj", "v_proj"],
        "max_steps": 3,
        "batch_size": 4,
        "max_length": 128,
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    trained = result(
        "train", "recipe.yaml", "--data", "facts@1", "--output", "out/facts", cwd=tmp_path
    )
    assert trained["steps"] == 3
    assert trained["snapshot_root"] == snap["root"]
    chat = openledger(
        "chat", "--model", str(tiny_llama_dir), "--adapter", "out/facts",
        "--question", "Code red?", "--max-tokens", "4", cwd=tmp_path,
    )  # fmt: skip
    answer = chat.stdout.split("assistant> ", 1)[1].splitlines()[0]
    report = result(
        "attribute", "--adapter", "out/facts", "--data", "facts", "--prompt", "Code red?",
        "--completion", answer or "RED ok.", "--method", "gradcos", cwd=tmp_path,
    )  # fmt: skip
    assert report["snapshot_root"] == snap["root"]
    assert report["adapter_id"] == trained["adapter_id"]
    assert len(report["top_records"]) == 5
    assert set(report["contributor_shares"]) <= {alice["address"]}
    evaluated = result(
        "evaluate", "out/facts", "--data", "facts@1", "--num-generate", "2",
        "--max-new-tokens", "4", cwd=tmp_path,
    )  # fmt: skip
    assert evaluated["loss"] > 0
    assert evaluated["base_loss"] > 0


def test_private_access_and_bad_input(tmp_path: Path) -> None:
    for name in ("owner", "reader"):
        result("account", "new", f"{name}.key", cwd=tmp_path)
    result(
        "datanet", "create", "secret", "--name", "secret", "--private",
        "--owner-key", "owner.key", cwd=tmp_path,
    )  # fmt: skip
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[:3]))
    result("datanet", "contribute", "secret", "rows.jsonl", "--key", "owner.key", cwd=tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[3]) + "\n" + json.dumps({"question": "?"}) + "\n")
    refused = openledger(
        "datanet", "contribute", "secret", "bad.jsonl", "--key", "owner.key", cwd=tmp_path, ok=False
    )
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: ")
    assert "Traceback" not in refused.stderr
    denied = openledger("datanet", "export", "secret", "out.jsonl", cwd=tmp_path, ok=False)
    assert denied.returncode == 2
    assert "grant" in denied.stderr.lower()
    request = result(
        "datanet", "access", "request", "secret", "--key", "reader.key",
        "--purpose", "evaluation", cwd=tmp_path,
    )  # fmt: skip
    approved = result(
        "datanet", "access", "approve", "secret", str(request["request_id"]),
        "--owner-key", "owner.key", "--out", "grant.json", cwd=tmp_path,
    )  # fmt: skip
    assert (tmp_path / "grant.json").stat().st_mode & 0o777 == 0o600
    exported = result(
        "datanet", "export", "secret", "out.jsonl", "--grant", "grant.json", cwd=tmp_path
    )
    assert exported["records"] == 3  # NOTE: the refused file stored nothing of itself
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["instruction"] for r in rows] == [r["instruction"] for r in ROWS[:3]]
    assert approved["request_id"] == request["request_id"]
    result(
        "datanet", "access", "revoke", "secret", str(request["request_id"]),
        "--owner-key", "owner.key", cwd=tmp_path,
    )  # fmt: skip
    revoked = openledger(
        "datanet", "export", "secret", "again.jsonl", "--grant", "grant.json",
        cwd=tmp_path, ok=False,
    )  # fmt: skip
    assert revoked.returncode == 2
    missing = openledger("account", "address", "nobody.key", cwd=tmp_path, ok=False)
    assert "cannot read the key file nobody.key" in missing.stderr
    twice = openledger("account", "new", "owner.key", cwd=tmp_path, ok=False)
    assert "never overwritten" in twice.stderr
    bad_data = openledger(
        "train", "recipe.yaml", "--data", "secret@x", "--output", "o", cwd=tmp_path, ok=False
    )
    assert "give a snapshot number after @" in bad_data.stderr
