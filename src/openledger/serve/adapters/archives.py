"""Unpacking a downloaded adapter archive (.tar, .tar.gz/.tgz, .zip) under caps.

Members are copied in chunks and counted as they are written, so a member whose header
understates its size (a zip or tar bomb) is stopped at the cap, not after it. Members
that would land outside the target folder, links and devices are refused. Every file is
fsync'd: the folder is renamed into the cache afterwards, and the rename must not reach
the disk before the data does.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO

from openledger.exceptions import AdapterFormatError, AdapterSourceError
from openledger.serve.adapters.policy import AdapterSourcePolicy

__all__ = ["unpack_archive"]

_CHUNK = 1 << 20


class _Budget:
    """Bytes and members left for one archive."""

    def __init__(self, policy: AdapterSourcePolicy, source: str) -> None:
        self.bytes_left = policy.max_unpacked_bytes
        self.members_left = policy.max_members
        self.policy = policy
        self.source = source

    def member(self) -> None:
        self.members_left -= 1
        if self.members_left < 0:
            raise AdapterSourceError(
                f"{self.source} holds more than AdapterSourcePolicy.max_members="
                f"{self.policy.max_members} members; refused"
            )

    def spend(self, num_bytes: int) -> None:
        self.bytes_left -= num_bytes
        if self.bytes_left < 0:
            raise AdapterSourceError(
                f"{self.source} unpacks to more than AdapterSourcePolicy.max_unpacked_bytes="
                f"{self.policy.max_unpacked_bytes} bytes; refused"
            )


def unpack_archive(archive: Path, target: Path, policy: AdapterSourcePolicy, source: str) -> None:
    """Unpack ``archive`` into the existing folder ``target``.

    Args:
        archive: A .tar, .tar.gz/.tgz or .zip file.
        target: Empty folder to unpack into.
        policy: Its ``max_unpacked_bytes`` and ``max_members`` caps apply.
        source: Where the archive came from (for messages).

    Raises:
        AdapterSourceError: The archive is over a cap.
        AdapterFormatError: Unreadable, or a member is a link, device or escapes ``target``.
    """
    budget = _Budget(policy, source)
    try:
        if zipfile.is_zipfile(archive):
            _unpack_zip(archive, target, budget)
        else:
            _unpack_tar(archive, target, budget)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise AdapterFormatError(
            f"{source} is no readable .tar(.gz) or .zip archive: {exc}"
        ) from exc


def _safe_member(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\x00" in name:
        raise AdapterFormatError(f"archive member {name!r} would land outside its folder")
    return path


def _unpack_zip(archive: Path, target: Path, budget: _Budget) -> None:
    with zipfile.ZipFile(archive) as opened:
        infos = opened.infolist()
        for _ in infos:
            budget.member()  # NOTE: counted before anything is written
        for info in infos:
            path = target / _safe_member(info.filename)
            if info.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            with opened.open(info) as handle:
                _copy(handle, path, budget)


def _unpack_tar(archive: Path, target: Path, budget: _Budget) -> None:
    with tarfile.open(archive, mode="r:*") as opened:
        for member in opened:  # NOTE: one header at a time; the count is capped before more
            budget.member()
            path = target / _safe_member(member.name)
            if member.isdir():
                path.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                handle = opened.extractfile(member)
                if handle is not None:
                    with handle:
                        _copy(handle, path, budget)
            else:
                raise AdapterFormatError(f"archive member {member.name!r} is a link or device")


def _copy(handle: IO[bytes], path: Path, budget: _Budget) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with _synced(path) as out:
        while chunk := handle.read(_CHUNK):
            budget.spend(len(chunk))
            out.write(chunk)


@contextmanager
def _synced(path: Path) -> Iterator[IO[bytes]]:
    with open(path, "wb") as out:
        yield out
        out.flush()
        os.fsync(out.fileno())
