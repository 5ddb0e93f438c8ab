"""A work directory per script ticket (`<home>/Work/<ticket>`) and the script log stored in it.

Why on disk: a script's output can be far larger than memory, the server reads it in pieces by
sequence number, and after an agent restart a ticket's workspace still says what happened, so a
repeated StartScript is answered from it instead of running the script twice. The log is JSON
lines (`[source, occurred_ms, text]`, sequence = 1-based line number, as the real Tentacle
numbers them); a sparse in-memory index keeps reads after sequence N cheap.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import secrets
import shutil
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from octopus_comms.halibut.contracts import ProcessOutput, ProcessOutputSource

from . import ReceivedStream, ServiceError

__all__ = [
    "LOG_FILE",
    "STATE_FILE",
    "ScriptLog",
    "ScriptRecord",
    "Workspace",
    "Workspaces",
    "encrypt_for_scripts",
    "move_into_place",
    "safe_file_name",
]

LOG_FILE = "Output.log"
STATE_FILE = "ScriptState.json"
MAX_LINE_CHARS = 64 * 1024
DEFAULT_MAX_READ_BYTES = 4 * 1024 * 1024

_SAFE_TICKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", re.ASCII)
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)

# The real Tentacle's AesEncryption (Octopus.Tentacle.Security): PBKDF2-SHA1 with this salt and
# iteration count, a 128-bit key, AES-CBC with PKCS7, output "IV__" + IV + ciphertext.
_AES_SALT = b"Octopuss"
_AES_ITERATIONS = 1000
_AES_IV_PREFIX = b"IV__"


def encrypt_for_scripts(plaintext: str, password: str, *, iv: bytes | None = None) -> bytes:
    """Encrypt a script file's text as the real Tentacle stores files sent with a password."""
    kdf = PBKDF2HMAC(algorithm=hashes.SHA1(), length=16, salt=_AES_SALT, iterations=_AES_ITERATIONS)
    key = kdf.derive(password.encode("utf-8"))
    iv = iv if iv is not None else secrets.token_bytes(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext.encode("utf-8")) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return _AES_IV_PREFIX + iv + encryptor.update(padded) + encryptor.finalize()


def safe_file_name(name: str) -> str:
    """A ScriptFile name must be a plain file name: no directories, no `..`, no NUL."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ServiceError(f"Refusing script file name {name!r}: it must be a plain file name")
    return name


def move_into_place(received: ReceivedStream, destination: Path) -> None:
    """Move a spooled stream to `destination` atomically (rename; across file systems: copy to a
    temporary file beside the destination, then rename)."""
    try:
        os.replace(received.path, destination)
        return
    except OSError as exc:
        if exc.errno != 18:  # EXDEV: another file system
            raise
    temporary = destination.with_name(f".{destination.name}.{secrets.token_hex(6)}.tmp")
    try:
        shutil.copyfile(received.path, temporary)
        os.replace(temporary, destination)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    received.path.unlink(missing_ok=True)


class ScriptLog:
    """Append-only script output with sequence numbers, stored as JSON lines."""

    INDEX_EVERY = 256

    def __init__(self, path: Path) -> None:
        self.path = path
        self._count = 0
        self._size = 0
        self._index = array("q")  # byte offset of line k * INDEX_EVERY (0-based)
        self._writer: BinaryIO | None = None
        if path.exists():
            self._rebuild()

    @property
    def count(self) -> int:
        """The sequence number of the last line (0: empty)."""
        return self._count

    def _rebuild(self) -> None:
        offset = 0
        with open(self.path, "rb") as file:
            for line in file:
                if not line.endswith(b"\n"):  # torn by a crash: drop it
                    break
                if self._count % self.INDEX_EVERY == 0:
                    self._index.append(offset)
                self._count += 1
                offset += len(line)
        if offset != self.path.stat().st_size:
            with open(self.path, "r+b") as file:
                file.truncate(offset)
        self._size = offset

    def append(self, source: ProcessOutputSource, text: str, occurred: _dt.datetime) -> int:
        """Store one line (longer ones are split); returns the last sequence number used."""
        if self._writer is None:
            self._writer = open(self.path, "ab")  # noqa: SIM115 (closed in close())
        pieces = [text[i : i + MAX_LINE_CHARS] for i in range(0, len(text), MAX_LINE_CHARS)] or [""]
        millis = int((occurred - _EPOCH).total_seconds() * 1000)
        for piece in pieces:
            record = json.dumps([int(source), millis, piece], ensure_ascii=False) + "\n"
            data = record.encode("utf-8", "replace")
            if self._count % self.INDEX_EVERY == 0:
                self._index.append(self._size)
            self._writer.write(data)
            self._size += len(data)
            self._count += 1
        self._writer.flush()
        return self._count

    def read(self, after: int, *, max_bytes: int = DEFAULT_MAX_READ_BYTES) -> tuple[list[ProcessOutput], int, bool]:
        """Lines with sequence > `after`: (lines, next sequence, complete). At most about
        `max_bytes` of text per call; `complete` is False when lines were left for next time."""
        after = max(0, after)
        if after >= self._count:
            return [], after, True
        if self._writer is not None:
            self._writer.flush()
        block = after // self.INDEX_EVERY
        sequence = block * self.INDEX_EVERY
        lines: list[ProcessOutput] = []
        total = 0
        with open(self.path, "rb") as file:
            file.seek(self._index[block])
            for raw in file:
                if sequence >= self._count:
                    break
                sequence += 1
                if sequence <= after:
                    continue
                lines.append(_decode_line(raw))
                total += len(raw)
                if total >= max_bytes and sequence < self._count:
                    return lines, sequence, False
        return lines, sequence, True

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _decode_line(raw: bytes) -> ProcessOutput:
    try:
        source, millis, text = json.loads(raw)
        occurred = _EPOCH + _dt.timedelta(milliseconds=int(millis))
        return ProcessOutput(source=ProcessOutputSource(int(source)), occurred=occurred, text=str(text))
    except (ValueError, TypeError):
        return ProcessOutput(source=ProcessOutputSource.Debug, occurred=_EPOCH, text="(unreadable log line)")


@dataclass(frozen=True)
class ScriptRecord:
    """What the state file says about a script: it started, and how it ended (if it did)."""

    ticket: str
    completed: bool
    exit_code: int | None


class Workspace:
    """One ticket's directory: the script, its files, its log and its state file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._log: ScriptLog | None = None

    @property
    def log(self) -> ScriptLog:
        if self._log is None:
            self._log = ScriptLog(self.directory / LOG_FILE)
        return self._log

    def write_text(self, name: str, text: str, *, mode: int = 0o700) -> Path:
        path = self.directory / safe_file_name(name)
        path.write_text(text, encoding="utf-8")
        path.chmod(mode)
        return path

    def save_file(self, name: str, received: ReceivedStream, password: str | None) -> Path:
        """Put a StartScript file into the directory (encrypted at rest when it came with a
        password, as the real Tentacle does; the script decrypts it with that password)."""
        path = self.directory / safe_file_name(name)
        if password is None:
            move_into_place(received, path)
            return path
        text = received.path.read_bytes().decode("utf-8-sig", "replace")
        path.write_bytes(encrypt_for_scripts(text, password))
        received.path.unlink(missing_ok=True)
        return path

    def write_record(self, record: ScriptRecord) -> None:
        payload = {"Ticket": record.ticket, "Completed": record.completed, "ExitCode": record.exit_code}
        temporary = self.directory / f".{STATE_FILE}.tmp"
        temporary.write_text(json.dumps(payload), encoding="utf-8")
        os.replace(temporary, self.directory / STATE_FILE)

    def read_record(self) -> ScriptRecord | None:
        try:
            payload: Any = json.loads((self.directory / STATE_FILE).read_text(encoding="utf-8"))
            exit_code = payload.get("ExitCode")
            return ScriptRecord(str(payload["Ticket"]), bool(payload["Completed"]),
                                int(exit_code) if exit_code is not None else None)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def delete(self) -> None:
        if self._log is not None:
            self._log.close()
        shutil.rmtree(self.directory, ignore_errors=True)


class Workspaces:
    """`<home>/Work`: ticket → directory (tickets are server-chosen text, so unsafe ones are
    mapped to a hash instead of being used as a path)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def directory_for(self, ticket: str) -> Path:
        if _SAFE_TICKET.fullmatch(ticket) and ".." not in ticket:
            return self.root / ticket
        return self.root / ("ticket-" + hashlib.sha256(ticket.encode("utf-8", "replace")).hexdigest()[:40])

    def create(self, ticket: str) -> Workspace:
        directory = self.directory_for(ticket)
        if directory.exists():
            shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True, mode=0o700)
        return Workspace(directory)

    def existing(self, ticket: str) -> Workspace | None:
        directory = self.directory_for(ticket)
        return Workspace(directory) if directory.is_dir() else None
