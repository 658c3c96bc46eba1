"""Adapter sources: hf:// through a local hub cache (offline), archive URLs over httpx."""

from __future__ import annotations

import io
import shutil
import tarfile
import zipfile
from pathlib import Path

import httpx
import pytest

from openledger.exceptions import AdapterFormatError, AdapterNotFoundError
from openledger.serve.adapters.sources import resolve_source

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    return adapter


@pytest.fixture
def offline_hub(tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    repo = cache / "models--acme--medqa-lora"
    shutil.copytree(folder, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_hub_sources_come_from_the_cache_when_offline(offline_hub: Path, tmp_path: Path) -> None:
    expected = offline_hub / "models--acme--medqa-lora" / "snapshots" / COMMIT
    assert resolve_source("hf://acme/medqa-lora", tmp_path) == expected
    assert resolve_source(f"hf://acme/medqa-lora@{COMMIT}", tmp_path) == expected
    with pytest.raises(AdapterNotFoundError, match="offline"):
        resolve_source("hf://acme/not-cached", tmp_path)
    with pytest.raises(AdapterNotFoundError, match="org/repo"):
        resolve_source("hf://no-org", tmp_path)


def tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zipped(files: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def serving(routes: dict[str, bytes], hits: list[str]) -> httpx.Client:
    def handle(request: httpx.Request) -> httpx.Response:
        hits.append(request.url.path)
        body = routes.get(request.url.path)
        return httpx.Response(404) if body is None else httpx.Response(200, content=body)

    return httpx.Client(transport=httpx.MockTransport(handle))


def test_archive_urls_are_downloaded_once_and_unpacked(tmp_path: Path) -> None:
    files = {"medqa/adapter_config.json": b"{}", "medqa/adapter_model.safetensors": b"w"}
    hits: list[str] = []
    client = serving({"/a.tar.gz": tar_gz(files), "/b.zip": zipped(files)}, hits)
    cache = tmp_path / "cache"
    first = resolve_source("https://example.org/a.tar.gz", cache, http_client=client)
    assert (first / "adapter_model.safetensors").read_bytes() == b"w"
    again = resolve_source("https://example.org/a.tar.gz", cache, http_client=client)
    assert again == first
    assert hits == ["/a.tar.gz"]  # the second call used the cache
    from_zip = resolve_source("https://example.org/b.zip", cache, http_client=client)
    assert from_zip.name == "medqa"
    with pytest.raises(AdapterNotFoundError, match="HTTP 404"):
        resolve_source("https://example.org/missing.tar.gz", cache, http_client=client)


def test_unsafe_or_unreadable_archives_are_refused(tmp_path: Path) -> None:
    routes = {
        "/escape.tar.gz": tar_gz({"../evil/adapter_config.json": b"{}"}),
        "/junk.tar.gz": b"this is no archive",
        "/empty.zip": zipped({"readme.txt": b"hi"}),
    }
    client = serving(routes, [])
    with pytest.raises(AdapterFormatError, match="outside"):
        resolve_source("https://x.org/escape.tar.gz", tmp_path, http_client=client)
    assert not (tmp_path.parent / "evil").exists()
    with pytest.raises(AdapterFormatError, match="archive"):
        resolve_source("https://x.org/junk.tar.gz", tmp_path, http_client=client)
    with pytest.raises(AdapterFormatError, match=r"0 adapter_config\.json"):
        resolve_source("https://x.org/empty.zip", tmp_path, http_client=client)


def test_local_folders_and_missing_paths(folder: Path, tmp_path: Path) -> None:
    assert resolve_source(folder, tmp_path) == folder
    assert resolve_source(folder.parent, tmp_path) == folder  # one adapter below
    with pytest.raises(AdapterNotFoundError):
        resolve_source(tmp_path / "absent", tmp_path)
