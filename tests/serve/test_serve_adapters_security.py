"""Adapter downloads under the source rules: schemes, addresses, redirects, caps, pins.

Every refusal names what was wrong and leaves nothing in the cache but the (empty)
lock file of its key. Real-socket cases run against an HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from tests.serve.test_serve_adapters_sources import tar_gz, zipped

from openledger.exceptions import AdapterFormatError, AdapterSourceError, ConfigError
from openledger.serve.adapters.fetch import AdapterSourcePolicy, allowed_address, check_url
from openledger.serve.adapters.sources import resolve_source

FILES = {"medqa/adapter_config.json": b"{}", "medqa/adapter_model.safetensors": b"w" * 64}
LOOPBACK = AdapterSourcePolicy(allow_loopback=True, download_timeout_s=20.0)


def zipped_deflated(files: dict[str, bytes]) -> bytes:
    """A zip whose members are compressed (a bomb must be small on the wire)."""
    return zipped(files, zipfile.ZIP_DEFLATED)


ARCHIVE = tar_gz(FILES)


def leftovers(cache: Path) -> list[str]:
    """What the cache holds besides its folders and empty lock files."""
    found = []
    for path in sorted(cache.rglob("*")):
        if path.is_dir() and path.name in ("urls", ".locks"):
            continue
        if path.parent.name == ".locks" and path.suffix == ".lock" and path.stat().st_size == 0:
            continue
        found.append(str(path.relative_to(cache)))
    return found


def mock_client(routes: dict[str, httpx.Response], hits: list[str]) -> httpx.Client:
    def handle(request: httpx.Request) -> httpx.Response:
        hits.append(str(request.url))
        response = routes.get(str(request.url))
        return response if response is not None else httpx.Response(404)

    return httpx.Client(transport=httpx.MockTransport(handle))


# --- the URL rules --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://example.org/a.tar.gz", "plain http"),
        ("https://127.0.0.1/a.tar.gz", "loopback"),
        ("https://localhost/a.tar.gz", "loopback"),
        ("https://2130706433/a.tar.gz", "loopback"),  # 127.0.0.1 in decimal
        ("https://[::1]/a.tar.gz", "loopback"),
        ("https://[::ffff:169.254.169.254]/x", "non-public"),
        ("https://169.254.169.254/latest/meta-data", "non-public"),
        ("https://10.0.0.8/a.tar.gz", "non-public"),
        ("https://192.168.1.1/a.tar.gz", "non-public"),
        ("https://0.0.0.0/a.tar.gz", "non-public"),
    ],
)
def test_urls_outside_the_rules_are_refused(url: str, reason: str, tmp_path: Path) -> None:
    hits: list[str] = []
    with pytest.raises(AdapterSourceError, match=reason):
        resolve_source(url, tmp_path, http_client=mock_client({}, hits))
    assert hits == []  # refused before any request
    assert leftovers(tmp_path) == []


def test_loopback_is_allowed_only_when_asked_and_never_private() -> None:
    assert check_url("http://127.0.0.1:8000/a.tar.gz", LOOPBACK).port == 8000
    with pytest.raises(AdapterSourceError, match="non-public"):
        check_url("http://169.254.169.254/", LOOPBACK)
    with pytest.raises(AdapterSourceError, match="plain http"):
        check_url("http://example.org/", LOOPBACK)
    with pytest.raises(AdapterSourceError, match="must be https"):
        check_url("ftp://example.org/a.tar.gz", LOOPBACK)
    with pytest.raises(ConfigError, match="max_members"):
        AdapterSourcePolicy(max_members=0)


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("http://example.org/a.tar.gz", "plain http"),
        ("https://127.0.0.1/a.tar.gz", "loopback"),
        ("http://127.0.0.1/a.tar.gz", "loopback"),
        ("https://169.254.169.254/latest/meta-data/", "non-public"),
        ("https://[fd00:ec2::254]/latest/", "non-public"),
    ],
)
def test_redirects_are_checked_like_the_first_url(
    location: str, reason: str, tmp_path: Path
) -> None:
    hits: list[str] = []
    routes = {"https://example.org/a.tar.gz": httpx.Response(302, headers={"location": location})}
    with pytest.raises(AdapterSourceError, match=reason):
        resolve_source(
            "https://example.org/a.tar.gz", tmp_path, http_client=mock_client(routes, hits)
        )
    assert hits == ["https://example.org/a.tar.gz"]  # the target was never requested
    assert leftovers(tmp_path) == []


def test_https_may_not_redirect_to_loopback_http_even_in_tests(tmp_path: Path) -> None:
    routes = {
        "https://example.org/a.tar.gz": httpx.Response(
            302, headers={"location": "http://127.0.0.1:9/a.tar.gz"}
        )
    }
    with pytest.raises(AdapterSourceError, match="https may not become http"):
        resolve_source(
            "https://example.org/a.tar.gz",
            tmp_path,
            http_client=mock_client(routes, []),
            policy=LOOPBACK,
        )


def test_redirect_loops_stop(tmp_path: Path) -> None:
    loop = {"https://example.org/a": httpx.Response(302, headers={"location": "/a"})}
    with pytest.raises(AdapterSourceError, match="redirected more than 5"):
        resolve_source("https://example.org/a", tmp_path, http_client=mock_client(loop, []))
    assert leftovers(tmp_path) == []


def test_host_names_are_checked_after_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def rebinding(host: str, *args: object, **kwargs: object) -> object:
        if host == "adapters.example":
            return real("127.0.0.1", *args, **kwargs)  # type: ignore[arg-type]
        if host == "meta.example":
            return real("169.254.169.254", *args, **kwargs)  # type: ignore[arg-type]
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    with pytest.raises(AdapterSourceError, match=r"adapters\.example resolves to the loopback"):
        allowed_address("adapters.example", 443, AdapterSourcePolicy())
    with pytest.raises(AdapterSourceError, match=r"meta\.example resolves to the non-public"):
        allowed_address("meta.example", 443, LOOPBACK)
    assert str(allowed_address("adapters.example", 443, LOOPBACK)) == "127.0.0.1"


# --- pins -----------------------------------------------------------------------------


def test_a_wrong_sha256_is_refused_and_the_right_one_accepted(tmp_path: Path) -> None:
    url = "https://example.org/a.tar.gz"
    client = mock_client({url: httpx.Response(200, content=ARCHIVE)}, [])
    wrong = "00" * 32
    with pytest.raises(AdapterSourceError, match=f"not the expected {wrong}"):
        resolve_source(url, tmp_path, http_client=client, sha256=wrong)
    with pytest.raises(AdapterSourceError, match="not the expected"):
        resolve_source(f"{url}#sha256={wrong}", tmp_path, http_client=client)
    assert leftovers(tmp_path) == []
    right = hashlib.sha256(ARCHIVE).hexdigest()
    folder = resolve_source(url, tmp_path, http_client=client, sha256=right)
    assert (folder / "adapter_model.safetensors").read_bytes() == FILES[
        "medqa/adapter_model.safetensors"
    ]
    with pytest.raises(AdapterSourceError, match="differ"):
        resolve_source(f"{url}#sha256={right}", tmp_path, http_client=client, sha256=wrong)
    with pytest.raises(AdapterSourceError, match="64 hex"):
        resolve_source(url, tmp_path, http_client=client, sha256="abc")


def test_require_pinned_refuses_unpinned_sources(tmp_path: Path) -> None:
    pinned = AdapterSourcePolicy(require_pinned=True)
    with pytest.raises(AdapterSourceError, match="no expected sha256"):
        resolve_source("https://example.org/a.tar.gz", tmp_path, policy=pinned)
    with pytest.raises(AdapterSourceError, match="40-hex commit"):
        resolve_source("hf://acme/medqa@main", tmp_path, policy=pinned)
    with pytest.raises(AdapterSourceError, match="sha256 pins archive URLs"):
        resolve_source("hf://acme/medqa", tmp_path, sha256="00" * 32)


# --- archives ---------------------------------------------------------------------------


def bomb_tar(num_bytes: int) -> bytes:
    return tar_gz({**FILES, "medqa/zeros.bin": bytes(num_bytes)})


def many_members(count: int) -> bytes:
    return tar_gz({**FILES, **{f"medqa/f{i}.txt": b"" for i in range(count)}})


@pytest.mark.parametrize(
    ("archive", "reason"),
    [
        (zipped_deflated({**FILES, "medqa/zeros.bin": bytes(16 << 20)}), "max_unpacked_bytes"),
        (bomb_tar(16 << 20), "max_unpacked_bytes"),
        (many_members(300), "max_members=256"),
    ],
    ids=["zip-bomb", "tar-bomb", "member-bomb"],
)
def test_archive_bombs_are_stopped_at_the_caps(archive: bytes, reason: str, tmp_path: Path) -> None:
    assert len(archive) < 64 << 10  # small on the wire, large unpacked
    url = "https://example.org/bomb"
    client = mock_client({url: httpx.Response(200, content=archive)}, [])
    policy = AdapterSourcePolicy(max_unpacked_bytes=1 << 20, max_members=256)
    with pytest.raises(AdapterSourceError, match=reason):
        resolve_source(url, tmp_path, http_client=client, policy=policy)
    assert leftovers(tmp_path) == []


def test_archives_without_exactly_one_adapter_are_not_cached(tmp_path: Path) -> None:
    url = "https://example.org/empty.zip"
    client = mock_client({url: httpx.Response(200, content=zipped_deflated({"readme": b"hi"}))}, [])
    with pytest.raises(AdapterFormatError, match=r"0 adapter_config\.json"):
        resolve_source(url, tmp_path, http_client=client)
    assert leftovers(tmp_path) == []


def test_a_declared_length_over_the_cap_is_refused_before_reading(tmp_path: Path) -> None:
    url = "https://example.org/big"
    response = httpx.Response(200, content=ARCHIVE, headers={"content-length": str(10**12)})
    with pytest.raises(AdapterSourceError, match="declares"):
        resolve_source(url, tmp_path, http_client=mock_client({url: response}, []))
    assert leftovers(tmp_path) == []


# --- a real server on 127.0.0.1 -----------------------------------------------------------


class Server:
    """A local HTTP server with a few routes; counts requests and bytes sent."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.sent = 0
        self.delay = 0.0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                owner.hits.append(self.path)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    owner.route(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def route(self, handler: BaseHTTPRequestHandler) -> None:
        routes: dict[str, Callable[[BaseHTTPRequestHandler], None]] = {
            "/a.tar.gz": self.archive,
            "/endless": self.endless,
            "/trickle": self.trickle,
            "/to-metadata": self.redirect("http://169.254.169.254/latest/meta-data/"),
            "/to-public-http": self.redirect("http://example.org/a.tar.gz"),
        }
        routes.get(handler.path, self.missing)(handler)

    def archive(self, handler: BaseHTTPRequestHandler) -> None:
        time.sleep(self.delay)  # widens the window in which resolvers race
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(ARCHIVE)))
        handler.end_headers()
        handler.wfile.write(ARCHIVE)

    def endless(self, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)  # no length: a body that never ends
        handler.end_headers()
        chunk = bytes(64 << 10)
        while self.sent < 1 << 30:  # NOTE: a bound for the test only, far above the cap
            handler.wfile.write(chunk)
            self.sent += len(chunk)

    def trickle(self, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.end_headers()
        for _ in range(200):  # one byte every 50 ms: each read is quick, the whole is not
            handler.wfile.write(b"x")
            handler.wfile.flush()
            time.sleep(0.05)

    def redirect(self, location: str) -> Callable[[BaseHTTPRequestHandler], None]:
        def send(handler: BaseHTTPRequestHandler) -> None:
            handler.send_response(302)
            handler.send_header("Location", location)
            handler.send_header("Content-Length", "0")
            handler.end_headers()

        return send

    def missing(self, handler: BaseHTTPRequestHandler) -> None:
        handler.send_error(404)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def server() -> Iterator[Server]:
    running = Server()
    yield running
    running.stop()


def test_loopback_http_needs_the_test_setting(server: Server, tmp_path: Path) -> None:
    with pytest.raises(AdapterSourceError, match=r"loopback address 127\.0\.0\.1"):
        resolve_source(server.url("/a.tar.gz"), tmp_path)
    assert server.hits == []
    folder = resolve_source(server.url("/a.tar.gz"), tmp_path, policy=LOOPBACK)
    assert folder.name == "medqa"
    assert server.hits == ["/a.tar.gz"]


def test_an_endless_body_is_stopped_at_the_byte_cap(server: Server, tmp_path: Path) -> None:
    policy = AdapterSourcePolicy(allow_loopback=True, max_download_bytes=1 << 20)
    with pytest.raises(AdapterSourceError, match="max_download_bytes=1048576"):
        resolve_source(server.url("/endless"), tmp_path, policy=policy)
    assert leftovers(tmp_path) == []
    time.sleep(0.2)
    assert server.sent < 64 << 20  # streamed and dropped, never read to the end


def test_a_trickling_body_is_stopped_at_the_overall_deadline(
    server: Server, tmp_path: Path
) -> None:
    policy = AdapterSourcePolicy(allow_loopback=True, download_timeout_s=1.0, read_timeout_s=5.0)
    started = time.monotonic()
    with pytest.raises(AdapterSourceError, match=r"download_timeout_s=1\.0"):
        resolve_source(server.url("/trickle"), tmp_path, policy=policy)
    assert time.monotonic() - started < 8.0  # far below the 10 s the body would take
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("path", "reason"),
    [("/to-metadata", r"169\.254\.169\.254"), ("/to-public-http", "plain http")],
)
def test_real_redirects_are_refused(server: Server, tmp_path: Path, path: str, reason: str) -> None:
    with pytest.raises(AdapterSourceError, match=reason):
        resolve_source(server.url(path), tmp_path, policy=LOOPBACK)
    assert server.hits == [path]
    assert leftovers(tmp_path) == []
