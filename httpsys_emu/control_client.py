"""Talk to a running `httpsys-emu serve` over its control socket.

    async with httpsys_emu.control_client.connect(state_dir) as control:
        await control.register("https://+:8443/app/", deliver="unix:/run/app.sock")
        ...   # the prefix is ours while this block runs (and this process lives)

`octopus-comms serve` uses this; `show servicestate` uses the blocking helper at the bottom.
"""

from __future__ import annotations

import json
import socket
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import trio

from . import control_protocol as proto
from .control import SOCKET_NAME
from .winerror import WinError


# Answers (a servicestate with many registrations) may be longer than a request line may be.
MAX_ANSWER = 16 << 20


class ControlUnavailable(Exception):
    """No daemon is listening on the control socket."""


class ControlClient:
    """One control session; registrations made through it end when it closes."""

    def __init__(self, stream: trio.SocketStream, timeout: float) -> None:
        self._stream = stream
        self._lines = proto.LineBuffer(MAX_ANSWER)
        self._pending: list[bytes] = []
        self._next_id = 0
        self._lock = trio.Lock()
        self.timeout = timeout

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Send one request and wait for its answer; WinError when the daemon refuses."""
        async with self._lock:
            self._next_id += 1
            rid = self._next_id
            with trio.fail_after(self.timeout):
                await self._stream.send_all(proto.encode({"id": rid, "op": op, **args}))
                while not self._pending:
                    data = await self._stream.receive_some(65536)
                    if not data:
                        raise ControlUnavailable("the front door closed the control connection")
                    self._pending.extend(self._lines.feed(data))
            answer = json.loads(self._pending.pop(0))
        if not answer.get("ok"):
            raise WinError(int(answer.get("error", 87)), str(answer.get("detail", "")))
        return answer

    async def register(self, prefix: str, *, deliver: str, client_cert: bool = False) -> str:
        answer = await self.call("register", prefix=prefix, deliver=deliver,
                                 client_cert=client_cert)
        return str(answer.get("prefix", prefix))

    async def unregister(self, prefix: str) -> None:
        await self.call("unregister", prefix=prefix)

    async def servicestate(self) -> dict[str, Any]:
        return (await self.call("servicestate"))["state"]

    async def wait_closed(self) -> None:
        """Return when the daemon goes away (for processes that must follow it)."""
        while True:
            data = await self._stream.receive_some(65536)
            if not data:
                return
            self._pending.extend(self._lines.feed(data))

    async def aclose(self) -> None:
        await self._stream.aclose()


def socket_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / SOCKET_NAME


@asynccontextmanager
async def connect(state_dir: str | Path, *, timeout: float = 10.0) -> AsyncIterator[ControlClient]:
    path = socket_path(state_dir)
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_unix_socket(str(path))
    except (OSError, trio.TooSlowError) as exc:
        raise ControlUnavailable(f"no front door is running on {path} ({exc})") from None
    client = ControlClient(stream, timeout)
    try:
        yield client
    finally:
        with trio.CancelScope(shield=True):
            await client.aclose()


def call_blocking(state_dir: str | Path, op: str, timeout: float = 5.0, **args: Any
                  ) -> dict[str, Any]:
    """One request from synchronous code (the CLI); ControlUnavailable if nothing listens."""
    path = socket_path(state_dir)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except OSError as exc:
            raise ControlUnavailable(f"no front door is running on {path} ({exc.strerror})") \
                from None
        sock.sendall(proto.encode({"id": 1, "op": op, **args}))
        lines = proto.LineBuffer(MAX_ANSWER)
        while True:
            data = sock.recv(65536)
            if not data:
                raise ControlUnavailable("the front door closed the control connection")
            got = lines.feed(data)
            if got:
                answer = json.loads(got[0])
                if not answer.get("ok"):
                    raise WinError(int(answer.get("error", 87)), str(answer.get("detail", "")))
                return answer
    finally:
        sock.close()
