"""The control socket: other processes register prefixes here, as applications do with HTTP.sys.

The caller's uid comes from SO_PEERCRED, never from what it says; a registration exists exactly
as long as the connection that made it, so a crashed process frees its prefixes at once.
"""

from __future__ import annotations

import os
import pwd
import socket
import stat
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from . import control_protocol as proto
from .metrics import render_metrics
from .registry import Owner
from .store import ForwardTarget
from .urlprefix import UrlPrefix, parse_prefix
from .winerror import ERROR_ACCESS_DENIED, ERROR_INVALID_PARAMETER, WinError

if TYPE_CHECKING:
    from .frontdoor import FrontDoor

SOCKET_NAME = "control.sock"
MAX_REGISTRATIONS_PER_SESSION = 1000
MAX_SESSIONS = 1024
SEND_TIMEOUT = 10.0
_LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost"}


def peer_credentials(sock: trio.socket.SocketType) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket, from the kernel."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return pid, uid, gid


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid:{uid}"


def check_delivery_target(text: str, uid: int) -> ForwardTarget:
    """A registered process may deliver only to loopback or to a Unix socket it owns."""
    target = ForwardTarget.parse(text)
    if target.unix_path is None:
        host = (target.host or "").lower()
        if host not in _LOOPBACK_HOSTS and not host.startswith("127."):
            raise WinError(ERROR_INVALID_PARAMETER,
                           "a registration delivers to loopback or a unix: socket only")
    elif uid != 0:
        try:
            st = os.stat(target.unix_path)
        except OSError as exc:
            raise WinError(ERROR_INVALID_PARAMETER,
                           f"cannot use {target.unix_path}: {exc.strerror}") from None
        if not stat.S_ISSOCK(st.st_mode):
            raise WinError(ERROR_INVALID_PARAMETER, f"{target.unix_path} is not a socket")
        if st.st_uid != uid:
            raise WinError(ERROR_ACCESS_DENIED, f"{target.unix_path} belongs to another user")
    return target


class ControlAlreadyRunning(Exception):
    """Another front door already serves this state directory's control socket."""


def _socket_is_live(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


class ControlServer:
    """Accepts control connections on `<state>/control.sock` and serves each in the nursery.

    Every session is bounded: one request line is at most `control_protocol.MAX_LINE` bytes,
    a session holds at most MAX_REGISTRATIONS_PER_SESSION prefixes, at most MAX_SESSIONS
    sessions are open at once, and an answer the peer does not read within SEND_TIMEOUT ends
    the session (and with it the session's registrations).
    """

    def __init__(self, door: "FrontDoor", path: Path) -> None:
        self.door = door
        self.path = path
        self._sessions = 0
        self.open_sessions = 0

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        if _socket_is_live(self.path):
            raise ControlAlreadyRunning(f"a front door is already running on {self.path}")
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        await sock.bind(str(self.path))
        os.chmod(self.path, 0o666)          # anyone may ask; SO_PEERCRED + urlacl decide
        sock.listen(128)
        listener = trio.SocketListener(sock)
        try:
            task_status.started()
            await trio.serve_listeners(self._serve, [listener])
        finally:
            try:
                self.path.unlink()
            except OSError:
                pass

    async def _serve(self, stream: trio.SocketStream) -> None:
        self._sessions += 1
        session = self._sessions
        if self.open_sessions >= MAX_SESSIONS:
            self.door.log.info(f"control session {session} refused: {MAX_SESSIONS} open")
            with trio.CancelScope(shield=True):
                await stream.aclose()
            return
        self.open_sessions += 1
        pid = uid = -1
        owner: Owner | None = None
        mine: list[UrlPrefix] = []
        try:
            pid, uid, _gid = peer_credentials(stream.socket)
            owner = Owner("control", pid=pid, uid=uid, user=user_name(uid), session=session)
            lines = proto.LineBuffer()
            while True:
                data = await stream.receive_some(65536)   # no deadline: the session is the lease
                if not data:
                    return
                for line in lines.feed(data):
                    request = proto.parse_request(line)
                    answer = await self._handle(request, owner, mine)
                    with trio.fail_after(SEND_TIMEOUT):
                        await stream.send_all(answer)
        except (proto.ControlProtocolError, trio.BrokenResourceError, trio.TooSlowError,
                OSError) as exc:
            self.door.log.info(f"control session {session} (pid {pid}) ended: {exc}")
        except Exception as exc:      # a bug here must not take the front door down
            self.door.log.info(f"control session {session} (pid {pid}) failed: {exc!r}")
        finally:
            self.open_sessions -= 1
            for prefix in mine:
                try:
                    self.door.unregister(prefix, owner)
                except WinError:
                    pass
            if mine:
                self.door.log.info(f"control session {session} (pid {pid}) closed: released "
                                   + ", ".join(str(p) for p in mine))
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _handle(self, request: proto.ControlRequest, owner: Owner,
                      mine: list[UrlPrefix]) -> bytes:
        args = request.args
        try:
            if request.op == "hello":
                return proto.ok(request.id, pid=os.getpid(), uid=owner.uid, user=owner.user)
            if request.op == "servicestate":
                return proto.ok(request.id, state=self.door.servicestate())
            if request.op == "metrics":
                return proto.ok(request.id, text=render_metrics(self.door))
            if request.op == "reload":
                if owner.uid != 0 and owner.uid != os.geteuid():
                    raise WinError(ERROR_ACCESS_DENIED, "only root or the daemon's user")
                self.door.request_reload()
                return proto.ok(request.id)
            prefix_text = args.get("prefix")
            if not isinstance(prefix_text, str):
                raise WinError(ERROR_INVALID_PARAMETER, "prefix is required")
            prefix = parse_prefix(prefix_text)
            if request.op == "register":
                if len(mine) >= MAX_REGISTRATIONS_PER_SESSION:
                    raise WinError(ERROR_INVALID_PARAMETER, "too many registrations")
                deliver = args.get("deliver")
                if not isinstance(deliver, str):
                    raise WinError(ERROR_INVALID_PARAMETER, "deliver is required")
                assert owner.uid is not None
                target = check_delivery_target(deliver, owner.uid)
                self.door.register(prefix, target, owner,
                                   client_cert=args.get("client_cert") is True)
                mine.append(prefix)
                return proto.ok(request.id, prefix=str(prefix))
            if request.op == "unregister":
                self.door.unregister(prefix, owner)
                mine[:] = [p for p in mine if p != prefix]
                return proto.ok(request.id)
            raise WinError(ERROR_INVALID_PARAMETER, f"unsupported op {request.op}")
        except WinError as exc:
            return proto.failure(request.id, exc.code, exc.message, exc.detail)
