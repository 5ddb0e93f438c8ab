"""The agent's Halibut services, and what every service call shares.

Why a `Call`: DataStreams are not values but byte streams beside the message. Incoming ones are
spooled to disk by the poller as their chunks arrive (never held in memory, never twice) and a
service takes them from the call by id; outgoing ones (a download) are registered on the call as
an open file and streamed by the poller after the response head. Services stay transport-free.

  workspace     a work directory per script ticket, script log storage
  mutex         the named script isolation mutex (reader-writer)
  scripts       IScriptService and IScriptServiceV2 over one script runner
  files         IFileTransferService with a safe path policy
  capabilities  ICapabilitiesServiceV2
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import trio

from octopus_comms.halibut.messages import DataStream

__all__ = [
    "Call",
    "Operation",
    "OutgoingFile",
    "ReceivedStream",
    "Service",
    "ServiceError",
    "SpoolWriter",
    "StreamSpool",
]


class ServiceError(Exception):
    """A call failed for a reason the server should read (e.g. "File not found: …")."""


@dataclass(frozen=True)
class Operation:
    """One method of a service contract: its .NET name (without `Async`), the handler, and the
    accepted type(s) of each parameter (`None` in a tuple: the argument may be null)."""

    name: str
    handler: Callable[..., Awaitable[Any]]
    params: tuple[type | tuple[type | None, ...], ...] = ()


class Service(Protocol):
    """A Halibut service: the contract it implements and its operations."""

    contract: str
    """The interface name requests carry in `service`, e.g. `IScriptServiceV2`."""
    implementation: str
    """The .NET-style type name used in "Method X::Y not found" messages."""

    def operations(self) -> Sequence[Operation]: ...


@dataclass(frozen=True)
class ReceivedStream:
    """An incoming DataStream, complete on disk: its spool file, length and SHA-1 (lower hex)."""

    id: uuid.UUID
    length: int
    path: Path
    sha1: str


@dataclass
class OutgoingFile:
    """An outgoing DataStream whose bytes come from an open file (exactly `stream.length`)."""

    stream: DataStream
    file: BinaryIO

    def close(self) -> None:
        self.file.close()


class SpoolWriter:
    """Receives one DataStream's chunks into a spool file, hashing as it goes."""

    def __init__(self, stream_id: uuid.UUID, length: int, path: Path) -> None:
        self.id = stream_id
        self.length = length
        self.path = path
        self._file: BinaryIO | None = open(path, "xb")  # noqa: SIM115 (closed in finish/discard)
        self._sha1 = hashlib.sha1()
        self._written = 0

    async def write(self, data: bytes) -> None:
        if self._file is None:
            raise RuntimeError("the spool file is closed")
        self._written += len(data)
        if self._written > self.length:
            raise ServiceError(f"DataStream {self.id} sent more than its {self.length} bytes")
        file, sha1 = self._file, self._sha1

        def write() -> None:
            file.write(data)
            sha1.update(data)

        await trio.to_thread.run_sync(write)

    async def finish(self) -> ReceivedStream:
        if self._file is None:
            raise RuntimeError("the spool file is closed")
        if self._written != self.length:
            raise ServiceError(f"DataStream {self.id} ended after {self._written} of {self.length} bytes")
        file, self._file = self._file, None
        await trio.to_thread.run_sync(file.close)
        return ReceivedStream(self.id, self.length, self.path, self._sha1.hexdigest())

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


class StreamSpool:
    """The directory where incoming DataStreams land (`<home>/Temp/Incoming`): on the home's file
    system, so a service can usually move a spooled file into place with one rename."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        for leftover in directory.glob("*.part"):  # from a previous run that died mid-stream
            try:
                leftover.unlink()
            except OSError:
                pass

    def open(self, stream: DataStream) -> SpoolWriter:
        """A writer for `stream`'s bytes (a fresh file per call, whatever the stream id says)."""
        path = self.directory / f"{uuid.uuid4().hex}.part"
        return SpoolWriter(stream.id, stream.length, path)

    async def spool_bytes(self, stream: DataStream, data: bytes) -> ReceivedStream:
        """Spool bytes already in memory (a buffered DataStream, tests)."""
        writer = self.open(stream)
        try:
            await writer.write(data)
            return await writer.finish()
        except BaseException:
            writer.discard()
            raise


@dataclass
class Call:
    """The DataStreams of one request and its response (see the module docstring)."""

    received: dict[uuid.UUID, ReceivedStream] = field(default_factory=dict)
    outgoing: dict[uuid.UUID, OutgoingFile] = field(default_factory=dict)

    def take(self, stream: DataStream | None) -> ReceivedStream:
        """The spooled bytes of an incoming DataStream; the service now owns the file."""
        if stream is None:
            raise ServiceError("a DataStream argument was null")
        received = self.received.get(stream.id)
        if received is None:
            raise ServiceError(f"the bytes of DataStream {stream.id} did not arrive")
        return received

    def send_file(self, file: BinaryIO, length: int) -> DataStream:
        """A DataStream for the response whose `length` bytes the poller reads from `file`."""
        stream = DataStream(id=uuid.uuid4(), length=length)
        self.outgoing[stream.id] = OutgoingFile(stream, file)
        return stream

    def cleanup(self) -> None:
        """Delete spool files no service took, close outgoing files (after the response went)."""
        for received in self.received.values():  # what a service took, it moved away
            try:
                os.unlink(received.path)
            except FileNotFoundError:
                pass
        for outgoing in self.outgoing.values():
            outgoing.close()
        self.outgoing.clear()
