"""A throwaway PostgreSQL server for tests and benchmarks.

``initdb`` in a fresh temporary folder, ``pg_ctl start`` on 127.0.0.1 (a free port, the unix
socket in that folder), stopped with ``pg_ctl stop`` on the same data folder (so only the
server started here), and the folder removed. PostgreSQL refuses to run as root; as root,
the server runs as the ``postgres`` system user (Debian's package makes one).
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = [
    "PostgresServer",
    "PostgresUnavailable",
    "find_binaries",
    "postgres",
    "start_postgres",
]

_SEARCH = ("/usr/local/bin", "/usr/lib/postgresql/*/bin")


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries (or a user to run them as) are not here."""


@dataclass
class PostgresServer:
    """A running server we started; :meth:`stop` stops it and removes its folder."""

    folder: Path
    port: int
    pid: int
    pg_ctl: str
    user: str | None

    def url(self, datanet: str | None = None, database: str = "postgres") -> str:
        """A store URL on this server (``?datanet=`` names the datanet's schema)."""
        query = f"?datanet={datanet}" if datanet else ""
        return f"postgresql://openledger@127.0.0.1:{self.port}/{database}{query}"

    def fresh_url(self, prefix: str = "t") -> str:
        """A store URL naming a schema nobody has used yet."""
        return self.url(f"{prefix}_{secrets.token_hex(6)}")

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its folder."""
        try:
            _run(self.user, [self.pg_ctl, "-D", str(self.folder / "data"), "-m", "fast", "-w",
                             "stop"])  # fmt: skip
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def find_binaries() -> dict[str, str]:
    """Paths of ``initdb`` and ``pg_ctl``.

    Raises:
        PostgresUnavailable: Naming what is missing.
    """
    folders = [f for pattern in _SEARCH for f in sorted(glob.glob(pattern))]
    found: dict[str, str] = {}
    for name in ("initdb", "pg_ctl", "postgres"):
        path = shutil.which(name) or next(
            (str(Path(f) / name) for f in folders if (Path(f) / name).is_file()), None
        )
        if path is None:
            raise PostgresUnavailable(
                f"PostgreSQL's {name} is not installed (apt-get install postgresql)"
            )
        found[name] = path
    return found


def _server_user() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise PostgresUnavailable("running as root and no 'postgres' user to run the server as")


def _run(user: str | None, command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, user=user, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr or result.stdout}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_postgres(*, fsync: bool = False) -> PostgresServer:
    """Start a server in a new temporary folder and return it.

    Args:
        fsync: Keep PostgreSQL's fsync on (benchmarks); tests run with it off (``-F``).

    Raises:
        PostgresUnavailable: The binaries are not installed.
    """
    binaries = find_binaries()
    user = _server_user()
    folder = Path(tempfile.mkdtemp(prefix="openledger-pg-"))
    try:
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(folder, entry.pw_uid, entry.pw_gid)
        data = folder / "data"
        _run(user, [binaries["initdb"], "-D", str(data), "-A", "trust", "-U", "openledger",
                    "-E", "UTF8", "--no-sync"])  # fmt: skip
        port = _free_port()
        options = f"-h 127.0.0.1 -p {port} -k {folder} -c max_connections=200"
        options += "" if fsync else " -F"
        _run(user, [binaries["pg_ctl"], "-D", str(data), "-o", options, "-l",
                    str(folder / "server.log"), "-w", "start"])  # fmt: skip
        pid = int((data / "postmaster.pid").read_text().split()[0])
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return PostgresServer(folder, port, pid, binaries["pg_ctl"], user)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session; tests take fresh schemas on it (``fresh_url``).

    Skips without the binaries or psycopg, except under ``CI`` (which installs both).
    """
    from tests.conftest import missing_reference

    try:
        import psycopg  # noqa: F401
    except ImportError:
        missing_reference("psycopg is not installed: pip install 'openledger[postgres]'")
    try:
        server = start_postgres()
    except PostgresUnavailable as exc:
        missing_reference(str(exc))
    yield server
    server.stop()
