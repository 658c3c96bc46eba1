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
