"""A pool of keep-alive connections to where forwarded requests go (`http://HOST:PORT` or
`unix:/PATH`).

Static forwards and registrations from other processes both deliver through this, so a web app
co-hosted on the shared port and a process that registered over the control socket see exactly
the same requests.
"""

from __future__ import annotations

import errno
import socket
from collections import defaultdict

import trio

from .store import ForwardTarget


# A delivery address is the store's ForwardTarget: one parser for `add forward` and the
# control socket's `deliver=`.
UpstreamTarget = ForwardTarget


def _socket_is_reusable(sock: trio.socket.SocketType) -> bool:
    """A pooled idle connection is reusable only if the peer has not closed or sent anything."""
    try:
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    except OSError as exc:
        return exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK)
    return False if data == b"" or data else True


class UpstreamPool:
    """Idle keep-alive connections per target; a connection is either in use or in the pool."""

    def __init__(self, max_idle_per_target: int = 64, connect_timeout: float = 10.0) -> None:
        self.max_idle = max_idle_per_target
        self.connect_timeout = connect_timeout
        self._idle: dict[UpstreamTarget, list[trio.SocketStream]] = defaultdict(list)
        self.connects = 0
        self.reuses = 0

    async def acquire(self, target: UpstreamTarget) -> tuple[trio.SocketStream, bool]:
        """A connection to `target` and whether it came from the pool."""
        idle = self._idle.get(target)
        while idle:
            stream = idle.pop()
            if _socket_is_reusable(stream.socket):
                self.reuses += 1
                return stream, True
            await _close_quietly(stream)
        with trio.fail_after(self.connect_timeout):
            if target.unix_path is not None:
                stream = await trio.open_unix_socket(target.unix_path)
            else:
                assert target.host is not None and target.port is not None
                stream = await trio.open_tcp_stream(target.host, target.port)
        if not target.is_unix:
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        self.connects += 1
        return stream, False

    async def release(self, target: UpstreamTarget, stream: trio.SocketStream) -> None:
        idle = self._idle[target]
        if len(idle) >= self.max_idle:
            await _close_quietly(stream)
        else:
            idle.append(stream)

    async def aclose(self) -> None:
        for streams in self._idle.values():
            for stream in streams:
                await _close_quietly(stream)
        self._idle.clear()

    def idle_count(self) -> int:
        return sum(len(v) for v in self._idle.values())


async def _close_quietly(stream: trio.abc.AsyncResource) -> None:
    with trio.CancelScope(shield=True):
        try:
            await stream.aclose()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
