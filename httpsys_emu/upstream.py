"""A pool of keep-alive connections to where forwarded requests go (`http://HOST:PORT` or
`unix:/PATH`).

Static forwards and registrations from other processes both deliver through this, so a web app
co-hosted on the shared port and a process that registered over the control socket see exactly
the same requests. An idle connection is kept for `idle_timeout` seconds at most, and checked
(peer closed? stray bytes?) before it is used again.
"""

from __future__ import annotations

import select
import socket

import trio

from .store import ForwardTarget

def _socket_is_reusable(sock: trio.socket.SocketType) -> bool:
    """An idle connection is reusable only while nothing is readable on it: a readable idle
    socket means the peer closed it (EOF, reset) or sent bytes nobody asked for."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN | select.POLLPRI | select.POLLRDHUP)
    try:
        return not poller.poll(0)
    except OSError:
        return False


class UpstreamPool:
    """Idle keep-alive connections per target; a connection is either in use or in the pool.

    `connects` counts new connections, `reuses` pooled ones handed out again (tests and
    `show servicestate` read them).
    """

    def __init__(self, max_idle_per_target: int = 64, connect_timeout: float = 10.0,
                 idle_timeout: float = 30.0) -> None:
        self.max_idle = max_idle_per_target
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self._idle: dict[ForwardTarget, list[tuple[trio.SocketStream, float]]] = {}
        self.connects = 0
        self.reuses = 0

    async def acquire(self, target: ForwardTarget) -> tuple[trio.SocketStream, bool]:
        """A connection to `target` and whether it came from the pool.

        OSError when the target refuses, trio.TooSlowError when connecting takes too long.
        """
        idle = self._idle.get(target)
        now = trio.current_time()
        while idle:
            stream, since = idle.pop()
            if now - since < self.idle_timeout and _socket_is_reusable(stream.socket):
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

    async def release(self, target: ForwardTarget, stream: trio.SocketStream) -> None:
        """Give a connection whose last exchange completed cleanly back to the pool."""
        idle = self._idle.setdefault(target, [])
        if len(idle) >= self.max_idle:
            await _close_quietly(stream)
        else:
            idle.append((stream, trio.current_time()))

    async def expire(self, keep: set[ForwardTarget] | None = None) -> None:
        """Close idle connections past `idle_timeout`, and all to targets not in `keep`."""
        now = trio.current_time()
        for target in list(self._idle):
            entries = self._idle[target]
            fresh = [(s, t) for s, t in entries
                     if now - t < self.idle_timeout and (keep is None or target in keep)]
            for stream, since in entries:
                if (stream, since) not in fresh:
                    await _close_quietly(stream)
            if fresh:
                self._idle[target] = fresh
            else:
                del self._idle[target]

    async def aclose(self) -> None:
        for entries in self._idle.values():
            for stream, _since in entries:
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
