"""The download cache under concurrent resolvers: threads and separate processes.

Every resolver of one URL ends with the same intact entry; one download happens; no
finished entry is ever deleted and no partial folder is left.
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from tests.serve.test_serve_adapters_security import ARCHIVE, FILES, LOOPBACK, Server, leftovers

from openledger.serve.adapters.sources import resolve_source

WEIGHTS = FILES["medqa/adapter_model.safetensors"]


def intact(folder: Path) -> bool:
    return (folder / "adapter_model.safetensors").read_bytes() == WEIGHTS and (
        folder / "adapter_config.json"
    ).is_file()


def only_entry(cache: Path) -> list[str]:
    return [p.name for p in (cache / "urls").iterdir() if p.name != ".locks"]


def test_threads_resolving_one_url_share_one_download(tmp_path: Path) -> None:
    hits: list[str] = []
    gate = threading.Event()

    def handle(request: httpx.Request) -> httpx.Response:
        hits.append(request.url.path)
        gate.wait(timeout=10)  # NOTE: every resolver is waiting by the time the body comes
        return httpx.Response(200, content=ARCHIVE)

    client = httpx.Client(transport=httpx.MockTransport(handle))
    url = "https://example.org/a.tar.gz"
    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [pool.submit(resolve_source, url, tmp_path, http_client=client) for _ in range(6)]
        threading.Timer(0.3, gate.set).start()
        folders = {f.result(timeout=60) for f in futures}
    assert len(folders) == 1
    assert intact(folders.pop())
    assert hits == ["/a.tar.gz"]
    assert len(only_entry(tmp_path)) == 1
    assert [p for p in leftovers(tmp_path) if ".partial" in p] == []


def _resolve_in_process(url: str, cache: str, out: multiprocessing.Queue[str]) -> None:
    try:
        folder = resolve_source(url, Path(cache), policy=LOOPBACK)
        out.put(str(folder) if intact(folder) else "broken")
    except Exception as exc:  # reported to the parent, which fails the test
        out.put(f"error: {exc!r}")


@pytest.mark.parametrize("num_processes", [3])
def test_processes_resolving_one_url_end_with_one_intact_entry(
    tmp_path: Path, num_processes: int
) -> None:
    server = Server()
    server.delay = 0.5  # the first download is still running when the others start
    try:
        context = multiprocessing.get_context("fork")
        out: multiprocessing.Queue[str] = context.Queue()
        url = server.url("/a.tar.gz")
        procs = [
            context.Process(target=_resolve_in_process, args=(url, str(tmp_path), out))
            for _ in range(num_processes)
        ]
        for proc in procs:
            proc.start()
        results = [out.get(timeout=60) for _ in procs]
        for proc in procs:
            proc.join(timeout=30)
        assert all(proc.exitcode == 0 for proc in procs)
    finally:
        server.stop()
    assert len(set(results)) == 1, results
    assert intact(Path(results[0]))
    assert server.hits == ["/a.tar.gz"]  # the losers waited and used the winner's entry
    assert len(only_entry(tmp_path)) == 1


def test_a_resolver_after_a_crash_cleans_the_partial_folder_and_keeps_entries(
    tmp_path: Path,
) -> None:
    client = httpx.Client(
        transport=httpx.MockTransport(lambda r: httpx.Response(200, content=ARCHIVE))
    )
    first = resolve_source("https://example.org/a.tar.gz", tmp_path, http_client=client)
    key = first.parent.name
    other_url = "https://example.org/b.tar.gz"
    second = resolve_source(other_url, tmp_path, http_client=client)
    stale = second.parent.parent / f".partial-{second.parent.name}-dead"
    stale.mkdir()  # what a resolver killed mid-download leaves
    (stale / "archive").write_bytes(b"half")
    second.parent.rename(tmp_path / "moved")  # its entry is gone: the next resolve refills it
    again = resolve_source(other_url, tmp_path, http_client=client)
    assert intact(again)
    assert not stale.exists()
    assert (tmp_path / "urls" / key).is_dir()
    assert intact(first)
