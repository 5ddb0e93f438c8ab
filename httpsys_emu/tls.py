"""TLS over any trio stream, with pyOpenSSL and memory BIOs (the front door's and the tentacle's).

Why not `trio.SSLStream`: it needs the standard library's `ssl`, which cannot accept arbitrary
client certificates nor switch certificates per binding. This class follows the same discipline:

- One OpenSSL call at a time, never awaiting in the middle of one; after each call, do exactly one
  thing that makes progress (send what OpenSSL produced, else receive what it wants), then retry.
- Outgoing TLS records leave in the order OpenSSL produced them: whoever takes bytes out of the
  outgoing BIO queues for a strict-FIFO send lock at once. Receiving is serialised with a lock and
  a counter, so a task that wanted data which another task already received does not block.
- Two tasks in `receive_some` (or two in `send_all`) at once is a bug → `trio.BusyResourceError`.
- EOF: close_notify → b"". A TCP close without close_notify after the handshake → b"" as well
  (HTTPS practice, like `https_compatible=True`); during the handshake → `BrokenResourceError`.
- `aclose` sends close_notify best-effort within `close_notify_timeout`, then closes the transport.

Deadlines (handshake, reads) belong to the caller: wrap calls in `trio.fail_after`.
"""

from __future__ import annotations

import enum
import ipaddress
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import trio
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

from .tlsconfig import ServerHandshakeInfo, certificate_thumbprint

T = TypeVar("T")

DEFAULT_RECEIVE_SIZE = 65536
_MAX_RECORD_PLAINTEXT = 16384
_SEND_PIECE = 65536
_BIO_READ_SIZE = 65536


class NeedHandshakeError(Exception):
    """Connection details were asked for before the handshake finished."""


class NoCertificateBindingError(trio.BrokenResourceError):
    """The handshake failed because no binding matched (SNI name, local address): no certificate."""


class _State(enum.Enum):
    OK = "ok"
    BROKEN = "broken"
    CLOSED = "closed"


class _ConflictGuard:
    """Raises BusyResourceError when a second task enters while the first is inside."""

    def __init__(self, message: str) -> None:
        self._message = message
        self._held = False

    def __enter__(self) -> None:
        if self._held:
            raise trio.BusyResourceError(self._message)
        self._held = True

    def __exit__(self, *exc_info: object) -> None:
        self._held = False


@dataclass(frozen=True)
class TLSInfo:
    """What the handshake settled, captured once when it finishes."""

    tls_version: str
    cipher: str
    alpn: str | None
    sni: str | None
    peer_certificate_der: bytes | None = field(repr=False)
    local_certificate_der: bytes | None = field(repr=False)

    @property
    def peer_thumbprint(self) -> str | None:
        if self.peer_certificate_der is None:
            return None
        return certificate_thumbprint(self.peer_certificate_der)


class _ResumableWrite:
    """SSL_write of one piece that can be retried after WantRead without writing bytes twice."""

    def __init__(self, conn: SSL.Connection, piece: memoryview) -> None:
        self._conn = conn
        self._piece = piece
        self._offset = 0

    def __call__(self) -> None:
        while self._offset < len(self._piece):
            # Partial-write mode (pyOpenSSL's default): each call encrypts at least one record.
            self._offset += self._conn.send(self._piece[self._offset:])


class TLSStream(trio.abc.Stream):
    """A TLS connection over `transport_stream`; server side with `server_side=True`.

    Server side: `context` is usually `tlsconfig.switching_context(selector.select)`; the local
    address for certificate selection comes from `local_address` or the transport's socket.
    Client side: `server_hostname` is sent as SNI (not for IP literals).
    """

    def __init__(
        self,
        transport_stream: trio.abc.Stream,
        context: SSL.Context,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        local_address: tuple[str, int] | None = None,
        close_notify_timeout: float = 1.0,
    ) -> None:
        self.transport_stream = transport_stream
        self.server_side = server_side
        self.server_hostname = server_hostname
        self._close_notify_timeout = close_notify_timeout
        self._conn = SSL.Connection(context, None)
        self._handshake_info: ServerHandshakeInfo | None = None
        if server_side:
            self._conn.set_accept_state()
            if local_address is None:
                local_address = _socket_local_address(transport_stream)
            ip, port = local_address if local_address is not None else (None, None)
            self._handshake_info = ServerHandshakeInfo(local_ip=ip, local_port=port)
            self._conn.set_app_data(self._handshake_info)
        else:
            self._conn.set_connect_state()
            if server_hostname and not _is_ip_literal(server_hostname):
                self._conn.set_tlsext_host_name(server_hostname.encode("idna"))
        self._state = _State.OK
        self._handshake_started = False
        self._handshake_done = trio.Event()
        self._info: TLSInfo | None = None
        self._send_lock = trio.StrictFIFOLock()
        self._receive_lock = trio.Lock()
        self._receive_count = 0
        self._delayed_outgoing = b""
        self._eof = False
        self._deferred_error: SSL.Error | None = None
        self._send_guard = _ConflictGuard("another task is sending on this TLSStream")
        self._receive_guard = _ConflictGuard("another task is receiving on this TLSStream")

    # ---------------------------------------------------------------- connection details

    @property
    def info(self) -> TLSInfo:
        if self._info is None:
            raise NeedHandshakeError("the TLS handshake has not finished")
        return self._info

    @property
    def tls_version(self) -> str:
        """'TLSv1.2' or 'TLSv1.3'."""
        return self.info.tls_version

    @property
    def cipher(self) -> str:
        return self.info.cipher

    @property
    def alpn(self) -> str | None:
        return self.info.alpn

    @property
    def sni(self) -> str | None:
        """The SNI name the client sent (server side) or that we sent (client side)."""
        return self.info.sni

    @property
    def peer_certificate_der(self) -> bytes | None:
        return self.info.peer_certificate_der

    @property
    def peer_thumbprint(self) -> str | None:
        """SHA-1 (upper-case hex) of the peer's certificate: the client's, on the server side."""
        return self.info.peer_thumbprint

    @property
    def local_certificate_der(self) -> bytes | None:
        return self.info.local_certificate_der

    @property
    def server_thumbprint(self) -> str | None:
        """SHA-1 of the server's certificate: the peer's on the client side, ours on the server."""
        der = self.info.local_certificate_der if self.server_side else self.info.peer_certificate_der
        return certificate_thumbprint(der) if der is not None else None

    @property
    def handshake_info(self) -> ServerHandshakeInfo | None:
        """Server side: the local address, SNI and chosen binding context seen by the SNI switch."""
        return self._handshake_info

    @property
    def context(self) -> SSL.Context:
        """The context in use (after the SNI switch: the chosen binding's)."""
        return self._conn.get_context()

    # ---------------------------------------------------------------- core loop

    def _check_status(self) -> None:
        if self._state is _State.BROKEN:
            raise trio.BrokenResourceError("TLS stream is broken")
        if self._state is _State.CLOSED:
            raise trio.ClosedResourceError("TLS stream was closed")

    def _take_outgoing(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = self._conn.bio_read(_BIO_READ_SIZE)
            except SSL.WantReadError:
                break
            chunks.append(chunk)
            if len(chunk) < _BIO_READ_SIZE:
                break       # a memory BIO returns all it holds up to the size asked: now empty
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _send_transport(self, data: bytes) -> None:
        """Send under the FIFO lock; the caller took `data` out of the BIO without yielding."""
        await _take_lock(self._send_lock)
        try:
            if self._delayed_outgoing:
                data, self._delayed_outgoing = self._delayed_outgoing + data, b""
            try:
                await self.transport_stream.send_all(data)
            except BaseException:
                # An unknown part of the records went out: the stream cannot continue.
                self._state = _State.BROKEN
                raise
        finally:
            self._send_lock.release()

    async def _receive_transport(self) -> None:
        """Feed the incoming BIO once, unless another task did so while we queued for the lock."""
        count = self._receive_count
        await _take_lock(self._receive_lock)
        try:
            if count != self._receive_count:
                return
            try:
                data = await self.transport_stream.receive_some(DEFAULT_RECEIVE_SIZE)
            except trio.BrokenResourceError:
                self._state = _State.BROKEN
                raise
            if data:
                self._conn.bio_write(data)
            else:
                self._conn.bio_shutdown()
            self._receive_count += 1
        finally:
            self._receive_lock.release()

    async def _drive(self, operation: Callable[[], T], *, handshake: bool = False) -> T:
        """Run `operation` until it completes, moving records between the BIOs and the transport.

        OpenSSL errors (including ZeroReturnError and SysCallError) propagate to the caller after
        any alert OpenSSL queued has been sent, best-effort.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        yielded = False
        while True:
            want_read = False
            finished = False
            result: T | None = None
            try:
                result = operation()
                finished = True
            except SSL.WantReadError:
                want_read = True
            except SSL.Error:
                await self._flush_alert()
                raise
            to_send = self._take_outgoing()
            if (handshake and finished and self.server_side
                    and self._conn.get_protocol_version_name() == "TLSv1.3"):
                # OpenSSL writes the TLS 1.3 session tickets as the handshake ends; a client that
                # is not reading yet could deadlock on them. Send them with our first record.
                self._delayed_outgoing += to_send
                to_send = b""
            if to_send:
                yielded = True
                await self._send_transport(to_send)
            elif want_read:
                yielded = True
                await self._receive_transport()
            if finished:
                if not yielded:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return result  # type: ignore[return-value]

    async def _flush_alert(self) -> None:
        """Best-effort: send what OpenSSL queued (an alert) before the stream reports failure."""
        data = self._take_outgoing()
        if not data or self._send_lock.locked():
            return
        with trio.move_on_after(self._close_notify_timeout):
            try:
                async with self._send_lock:
                    await self.transport_stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _flush_outgoing(self) -> None:
        """Send what a synchronous OpenSSL call left in the outgoing BIO (e.g. a KeyUpdate)."""
        data = self._take_outgoing()
        if data:
            await self._send_transport(data)

    # ---------------------------------------------------------------- handshake

    async def do_handshake(self) -> None:
        """Complete the handshake (idempotent; other tasks wait for the one doing it)."""
        self._check_status()
        await self._ensure_handshake()

    async def _ensure_handshake(self) -> None:
        if self._handshake_done.is_set():
            self._check_status()
            return
        if self._handshake_started:
            await self._handshake_done.wait()
            self._check_status()
            return
        self._handshake_started = True
        try:
            await self._drive(self._conn.do_handshake, handshake=True)
        except SSL.Error as exc:
            self._state = _State.BROKEN
            info = self._handshake_info
            if info is not None and info.refused:
                raise NoCertificateBindingError(
                    f"no certificate binding for SNI {info.sni!r} on "
                    f"{info.local_ip}:{info.local_port}") from exc
            raise trio.BrokenResourceError(f"TLS handshake failed: {exc!r}") from exc
        except BaseException:
            self._state = _State.BROKEN
            raise
        finally:
            self._handshake_done.set()
        self._info = self._capture_info()

    def _capture_info(self) -> TLSInfo:
        conn = self._conn
        peer = conn.get_peer_certificate(as_cryptography=True)
        local = conn.get_certificate(as_cryptography=True)
        alpn = conn.get_alpn_proto_negotiated()
        if self._handshake_info is not None and self._handshake_info.chosen is not None:
            sni = self._handshake_info.sni  # what this ClientHello said, seen by the SNI switch
        elif self.server_side:
            raw_sni = conn.get_servername()
            sni = raw_sni.decode("ascii", "replace") if raw_sni else None
        elif self.server_hostname and not _is_ip_literal(self.server_hostname):
            sni = self.server_hostname
        else:
            sni = None
        return TLSInfo(
            tls_version=conn.get_protocol_version_name(),
            cipher=conn.get_cipher_name() or "",
            alpn=alpn.decode("ascii", "replace") if alpn else None,
            sni=sni,
            peer_certificate_der=peer.public_bytes(Encoding.DER) if peer is not None else None,
            local_certificate_der=local.public_bytes(Encoding.DER) if local is not None else None,
        )

    # ---------------------------------------------------------------- Stream API

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Up to `max_bytes` (default 64 KiB) of plaintext: everything OpenSSL can decrypt from
        what has arrived, after waiting for at least one byte. b"" at EOF."""
        with self._receive_guard:
            self._check_status()
            await self._ensure_handshake()
            if max_bytes is None:
                max_bytes = DEFAULT_RECEIVE_SIZE
            else:
                max_bytes = operator.index(max_bytes)
                if max_bytes < 1:
                    raise ValueError("max_bytes must be >= 1")
            if self._deferred_error is not None:
                self._state = _State.BROKEN
                raise trio.BrokenResourceError("TLS error") from self._deferred_error
            if self._eof:
                await trio.lowlevel.checkpoint()
                return b""
            try:
                first = await self._drive(
                    lambda: self._conn.recv(min(max_bytes, _MAX_RECORD_PLAINTEXT)))
            except (SSL.ZeroReturnError, SSL.SysCallError):
                # close_notify, or a TCP close without it after the handshake: both are EOF here.
                self._eof = True
                return b""
            except SSL.Error as exc:
                self._state = _State.BROKEN
                raise trio.BrokenResourceError(f"TLS error: {exc!r}") from exc
            chunks = [first]
            total = len(first)
            while total < max_bytes:
                try:
                    more = self._conn.recv(min(max_bytes - total, _MAX_RECORD_PLAINTEXT))
                except SSL.WantReadError:
                    break
                except (SSL.ZeroReturnError, SSL.SysCallError):
                    self._eof = True
                    break
                except SSL.Error as exc:
                    self._deferred_error = exc  # reported on the next call, after this data
                    break
                chunks.append(more)
                total += len(more)
            await self._flush_outgoing()
            return b"".join(chunks)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send `data`, 64 KiB at a time so buffers stay small."""
        with self._send_guard:
            self._check_status()
            await self._ensure_handshake()
            view = memoryview(data).cast("B")
            if not view:
                await trio.lowlevel.checkpoint()
                return
            for start in range(0, len(view), _SEND_PIECE):
                try:
                    await self._drive(_ResumableWrite(self._conn, view[start:start + _SEND_PIECE]))
                except SSL.Error as exc:
                    self._state = _State.BROKEN
                    raise trio.BrokenResourceError(f"TLS error: {exc!r}") from exc

    async def send_eof(self) -> None:
        """Send close_notify and keep receiving: TLS's half-close (tunnels, lingering close).

        After this, `send_all` fails; `receive_some` goes on until the peer's close_notify/EOF.
        """
        with self._send_guard:
            self._check_status()
            await self._ensure_handshake()
            try:
                self._conn.shutdown()
            except SSL.Error:
                pass
            await self._flush_outgoing()

    async def wait_send_all_might_not_block(self) -> None:
        with self._send_guard:
            self._check_status()
            async with self._send_lock:
                await self.transport_stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        """Send close_notify (best-effort, bounded by `close_notify_timeout`), close the transport."""
        if self._state is _State.CLOSED:
            await trio.lowlevel.checkpoint()
            return
        say_goodbye = self._state is _State.OK and self._info is not None
        self._state = _State.CLOSED
        try:
            if say_goodbye and not self._send_lock.locked():
                with trio.move_on_after(self._close_notify_timeout):
                    try:
                        self._conn.shutdown()
                    except SSL.Error:
                        pass
                    data = self._delayed_outgoing + self._take_outgoing()
                    self._delayed_outgoing = b""
                    if data:
                        try:
                            async with self._send_lock:
                                await self.transport_stream.send_all(data)
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            pass
        finally:
            await self.transport_stream.aclose()


async def _take_lock(lock: trio.Lock) -> None:
    """Take a free lock at once, without the extra trip through the scheduler that
    `lock.acquire()` makes (the transport call that follows is the checkpoint); queue for it
    (FIFO) when it is held or others wait."""
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()


def _socket_local_address(stream: trio.abc.Stream) -> tuple[str, int] | None:
    sock = getattr(stream, "socket", None)
    if sock is None:
        return None
    try:
        address = sock.getsockname()
    except OSError:
        return None
    return str(address[0]), int(address[1])


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True
