"""The `openledger` command, run in-process and as a console script."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from openledger import __version__
from openledger.cli import main
from openledger.models import save_tiny_model


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"openledger {__version__}"


def test_models_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:4] == ["NAME", "KIND", "INSTALLED", "CACHED"]
    assert "smollm2-135m-instruct" in out


def test_download_unknown_alias(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "download", "no-such-alias"]) == 2
    err = capsys.readouterr().err
    assert "unknown model alias 'no-such-alias'" in err
    assert "smollm2-135m-instruct" in err


def test_chat_streams_the_engines_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from openledger.serve import Engine, SamplingParams

    folder = save_tiny_model(tmp_path / "tiny", "qwen2")
    argv = ["chat", "--model", str(folder), "--question", "hi", "--max-tokens", "6"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    messages = [{"role": "user", "content": "hi"}]
    expected = Engine(str(folder)).generate(messages, SamplingParams(max_tokens=6))[0].text
    assert f"user> hi\nassistant> {expected}\n" in out
    assert "pieces streamed" in out


def test_chat_bad_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "--model", "./missing-model-folder"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_chat_bad_token_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "--max-tokens", "0"]) == 2
    assert "--max-tokens" in capsys.readouterr().err


def test_console_script_is_installed() -> None:
    exe = shutil.which("openledger")
    if exe is None:
        pytest.fail("the `openledger` console script is not on PATH; is the package installed?")
    result = subprocess.run([exe, "version"], capture_output=True, text=True, check=True)
    assert result.stdout.startswith("openledger ")


def test_keys_create_prints_the_key_once_and_stores_its_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from openledger.gateway import ReceiptLedger, hash_api_key

    ledger = tmp_path / "gateway.db"
    payer = "0x" + "ab" * 20
    assert main(["keys", "create", "--ledger", str(ledger), "--payer", payer]) == 0
    captured = capsys.readouterr()
    key = captured.out.strip()
    assert key.startswith("olk-")
    assert "shown only now" in captured.err
    with ReceiptLedger(ledger) as book:
        record = book.find_key(key)
    assert record is not None
    assert record.key_hash == hash_api_key(key)
    assert record.payer.lower() == payer
    assert key.encode() not in ledger.read_bytes()


def test_keys_create_bad_payer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "create", "--ledger", str(tmp_path / "l.db"), "--payer", "0x12"]) == 2
    assert "payer" in capsys.readouterr().err


def test_serve_refuses_bad_settings_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("port: 99999\n")
    assert main(["serve", "--config", str(config)]) == 2
    assert "port" in capsys.readouterr().err
    assert main(["serve", "--adapter", "no-equals-sign"]) == 2
    assert "NAME=SOURCE" in capsys.readouterr().err


def test_chain_deploy_needs_a_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["chain", "deploy", "--rpc-url", "http://127.0.0.1:1"])
    assert "--keystore" in capsys.readouterr().err
    unset = ["chain", "deploy", "--rpc-url", "http://127.0.0.1:1", "--private-key-env", "NO_VAR"]
    assert main(unset) == 2
    assert "NO_VAR is not set" in capsys.readouterr().err
    keystore = tmp_path / "key.json"
    keystore.write_text("{}")
    piped = ["chain", "deploy", "--rpc-url", "http://127.0.0.1:1", "--keystore", str(keystore)]
    assert main(piped) == 2  # stdin is no terminal: the password must come from a variable
    assert "--password-env" in capsys.readouterr().err


def test_chain_deploy_with_a_keystore_writes_a_manifest_the_protocol_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from eth_account import Account as EthAccount
    from tests.chain.conftest import running_anvil

    from openledger.chain import Account, DeploymentManifest, connect

    deployer = Account.create()
    keystore = tmp_path / "deployer.json"
    keystore.write_text(json.dumps(EthAccount.encrypt(deployer.key, "pw", iterations=2)))
    monkeypatch.setenv("DEPLOY_PASSWORD", "wrong")
    manifest = tmp_path / "deployment.json"
    with running_anvil() as url:
        args = ["chain", "deploy", "--rpc-url", url, "--keystore", str(keystore)]
        args += ["--password-env", "DEPLOY_PASSWORD", "--manifest", str(manifest), "--keep-admin"]
        assert main(args) == 2
        assert "cannot decrypt" in capsys.readouterr().err
        monkeypatch.setenv("DEPLOY_PASSWORD", "pw")
        assert main(args) == 2  # a fresh account: nothing to pay gas with
        assert "no native coin" in capsys.readouterr().err
        assert not manifest.exists()
        chain = connect(url)
        chain.fund(deployer.address, 10**19)
        assert main(args) == 0
        body = json.loads(capsys.readouterr().out)
        assert body["resumed"] is False
        assert body["chain_id"] == chain.chain_id
        protocol = chain.protocol(manifest)
        assert protocol.rewards.default_admin() == deployer.address  # --keep-admin
        assert protocol.addresses.rewards == body["contracts"]["rewards"]
        assert DeploymentManifest.load(manifest).complete
