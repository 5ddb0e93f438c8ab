"""IFileTransferService: UploadFile and DownloadFile, confined to safe places on disk.

Why a path policy (the real Tentacle writes any absolute path the server names): a polling agent
trusts its server, but one stolen server certificate should not mean "write /etc/sudoers". So:
- a relative path goes under `<home>/Files` (the real Tentacle's convention for relative paths);
- an absolute path is allowed only under the allowed roots (default: the home and the app dir;
  configurable), checked after resolving symbolic links of the directories;
- any `..` segment, an empty path or a NUL byte is refused with a clear error.
Downloads do not follow a symbolic link in the last path segment. Uploads are atomic: the
spooled bytes are renamed into place (temporary file + rename when the destination is on another
file system), so a reader never sees half a file.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import trio

from octopus_comms.halibut.contracts import UploadResult
from octopus_comms.halibut.messages import DataStream

from . import Call, Operation, ReceivedStream, ServiceError
from .workspace import move_into_place

__all__ = ["FileTransferService", "PathPolicy"]


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class PathPolicy:
    """Where UploadFile and DownloadFile may touch the disk (see the module docstring)."""

    def __init__(self, relative_root: Path, allowed_roots: Sequence[Path]) -> None:
        self.relative_root = Path(os.path.abspath(relative_root))
        roots = [Path(os.path.abspath(r)) for r in allowed_roots]
        if not any(_within(str(self.relative_root), str(r)) for r in roots):
            roots.append(self.relative_root)
        self.allowed_roots = tuple(roots)

    def describe(self) -> str:
        return ", ".join(str(r) for r in self.allowed_roots)

    def resolve(self, requested: str) -> Path:
        """The absolute path for `requested`, or ServiceError saying why it is refused."""
        if not requested or not requested.strip():
            raise ServiceError("The path is empty")
        if "\0" in requested:
            raise ServiceError("The path contains a NUL character")
        pure = PurePosixPath(requested)
        if ".." in pure.parts:
            raise ServiceError(f"Refusing the path '{requested}': '..' segments are not allowed")
        candidate = Path(os.path.normpath(pure if pure.is_absolute() else self.relative_root / pure))
        if (candidate.name in ("", ".", "..") or requested.endswith("/")
                or candidate == self.relative_root or candidate in self.allowed_roots):
            raise ServiceError(f"Refusing the path '{requested}': it names a directory, not a file")
        lexical = str(candidate)
        real_parent = os.path.realpath(candidate.parent)
        real = os.path.join(real_parent, candidate.name)
        for root in self.allowed_roots:
            real_root = os.path.realpath(root)
            if _within(lexical, str(root)) and _within(real, real_root):
                return candidate
        raise ServiceError(
            f"Refusing the path '{requested}': this Tentacle only transfers files under "
            f"{self.describe()}"
        )


class FileTransferService:
    """`IFileTransferService` over a PathPolicy."""

    contract = "IFileTransferService"
    implementation = "Octopus.Tentacle.Services.FileTransfer.FileTransferService"

    def __init__(self, policy: PathPolicy) -> None:
        self.policy = policy

    def operations(self) -> Sequence[Operation]:
        return (
            Operation("UploadFile", self.upload_file, (str, DataStream)),
            Operation("DownloadFile", self.download_file, (str,)),
        )

    async def upload_file(self, call: Call, remote_path: str, upload: DataStream) -> UploadResult:
        destination = self.policy.resolve(remote_path)
        received = call.take(upload)
        await trio.to_thread.run_sync(self._place, received, destination)
        return UploadResult(full_path=str(destination), hash=received.sha1, length=received.length)

    @staticmethod
    def _place(received: ReceivedStream, destination: Path) -> None:
        if destination.is_dir() and not destination.is_symlink():
            raise ServiceError(f"Cannot upload to {destination}: it is a directory")
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            move_into_place(received, destination)
        except OSError as exc:
            raise ServiceError(f"Cannot write {destination}: {exc.strerror or exc}") from None

    async def download_file(self, call: Call, remote_path: str) -> DataStream:
        path = self.policy.resolve(remote_path)
        file, length = await trio.to_thread.run_sync(self._open, path)
        return call.send_file(file, length)

    @staticmethod
    def _open(path: Path) -> tuple[BinaryIO, int]:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ServiceError(f"File not found: {path}") from None
        except OSError as exc:
            raise ServiceError(f"Cannot read {path}: {exc.strerror or exc}") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise ServiceError(f"Cannot download {path}: it is not a regular file")
        return os.fdopen(fd, "rb"), info.st_size
