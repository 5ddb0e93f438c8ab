"""Atomic file replacement: readers see the old file or the new one, never half of either.

Private keys go through here, so the temporary file carries its final mode from the moment it is
created (no window where a key is world-readable) and nothing is left behind on failure.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def fsync_directory(directory: Path) -> None:
    """Flush a directory entry (a rename or an unlink) to disk."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data`: temp file in the same directory, fsync, rename, fsync dir.

    The temp file is created with O_EXCL and `mode` (then fchmod'ed to exactly `mode`, since the
    umask can only remove bits), so a 0600 key is never readable by others, even briefly.
    """
    path = Path(path)
    directory = path.parent
    temp = directory / f".{path.name}.{secrets.token_hex(8)}{TEMP_SUFFIX}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    fsync_directory(directory)


def remove_durably(path: Path) -> None:
    """Unlink `path` and flush the directory, so a deletion survives a crash."""
    path = Path(path)
    os.unlink(path)
    fsync_directory(path.parent)
