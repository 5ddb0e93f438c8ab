"""A bare trio + pyOpenSSL HTTPS server: the floor under the front door's handshake figure.

It does what the front door must do for one `Connection: close` request and nothing else (no
routing, no log, no SNI switch, no head parser): memory-BIO handshake, read up to the blank
line, answer `200 OK`, close. The same TLS policy as the front door (tlsconfig.server_context)
with session tickets and cache off, as on the front door's switching context and the nginx peer
(OpenSSL still sends its two TLS 1.3 NewSessionTicket messages in all three), so the difference
to the front door is the front door's own per-connection work.
Run: `python bench/ref_tls_server.py --cert C --key K --port P`.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

import trio
from OpenSSL import SSL

from httpsys_emu.tlsconfig import server_context

RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
            b"Connection: close\r\n\r\nok")
DEADLINE = 10.0


async def _flush(conn: SSL.Connection, tcp: trio.SocketStream) -> None:
    while True:
        try:
            data = conn.bio_read(65536)
        except SSL.WantReadError:
            return
        await tcp.send_all(data)


async def _feed(conn: SSL.Connection, tcp: trio.SocketStream) -> bool:
    await _flush(conn, tcp)
    data = await tcp.receive_some(65536)
    if not data:
        return False
    conn.bio_write(data)
    return True


async def handle(ctx: SSL.Context, tcp: trio.SocketStream) -> None:
    tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
    conn = SSL.Connection(ctx, None)
    conn.set_accept_state()
    with trio.move_on_after(DEADLINE):
        try:
            while True:
                try:
                    conn.do_handshake()
                    break
                except SSL.WantReadError:
                    if not await _feed(conn, tcp):
                        return
            request = b""
            while b"\r\n\r\n" not in request:
                try:
                    request += conn.recv(65536)
                except SSL.WantReadError:
                    if not await _feed(conn, tcp):
                        return
                except SSL.ZeroReturnError:
                    return
            conn.sendall(RESPONSE)
            conn.shutdown()
            await _flush(conn, tcp)
        except (SSL.Error, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await tcp.aclose()


async def serve(ctx: SSL.Context, port: int) -> None:
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1", backlog=4096)
    print(f"ready on 127.0.0.1:{port}", flush=True)
    await trio.serve_listeners(lambda tcp: handle(ctx, tcp), listeners)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cert", required=True, type=Path)
    parser.add_argument("--key", required=True, type=Path)
    parser.add_argument("--port", required=True, type=int)
    args = parser.parse_args(argv)
    ctx = server_context(args.cert.read_bytes(), args.key.read_bytes(),
                         request_client_cert=False, session_tickets=False)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    try:
        trio.run(serve, ctx, args.port)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
