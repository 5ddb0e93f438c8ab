"""The comms endpoint's HTTP face: the friendly page, and the WebSocket upgrade into polling.

One handler serves both delivery modes of the front door (in-process, or this process behind the
control socket via `httpsys_emu.appserver`), since both hand it the same `HandlerRequest`.
"""

from __future__ import annotations

import logging

from httpsys_emu.handlers import HandlerRequest

from .polling import LiveAgents, TrustLookup, serve_polling
from .queue import KEEPALIVE_INTERVAL, PendingRequestQueues
from .wshandshake import (OCTOPUS_SUBPROTOCOL, UpgradeRefused, accept_headers, check_upgrade,
                          is_upgrade_request)
from .wsstream import HalibutWebSocket

log = logging.getLogger("octopus_comms.endpoint")

FRIENDLY_TITLE = "Octopus Server configured successfully"
FRIENDLY_PAGE = (
    "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n"
    f"<title>{FRIENDLY_TITLE}</title>\n"
    "<style>body{font-family:sans-serif;margin:3em;color:#333}h1{color:#2f93e0}</style>\n"
    "</head>\n<body>\n"
    f"<h1>{FRIENDLY_TITLE}</h1>\n"
    "<p>If you can view this page, your Octopus Server is configured and ready to accept "
    "polling Tentacle connections over secure WebSockets on this address.</p>\n"
    "</body>\n</html>\n"
).encode("utf-8")


class CommsEndpoint:
    """Handles requests on the commsListenWebSocket prefix."""

    def __init__(self, *, trust: TrustLookup, queues: PendingRequestQueues, live: LiveAgents,
                 node: str = "node-1", keepalive: float = KEEPALIVE_INTERVAL) -> None:
        self.trust = trust
        self.queues = queues
        self.live = live
        self.node = node
        self.keepalive = keepalive

    async def __call__(self, request: HandlerRequest) -> None:
        info = request.info
        headers: dict[str, str] = {}
        for name, value in info.headers:
            headers.setdefault(name.lower(), value)
        if not is_upgrade_request(headers):
            # A browser GET, or the agent's probe POST: drain what it sent, show the page.
            try:
                await request.read_body(limit=1 << 20)
            except ValueError:
                pass
            await request.respond(200, [("Content-Type", "text/html; charset=utf-8")],
                                  b"" if info.method == "HEAD" else FRIENDLY_PAGE)
            return
        verdict = check_upgrade(info.method, info.version, headers)
        if isinstance(verdict, UpgradeRefused):
            await request.respond(verdict.status, [("Content-Type", "text/plain"),
                                                   *verdict.headers],
                                  (verdict.reason + "\n").encode())
            return
        subprotocol = next((p for p in verdict.subprotocols
                            if p.lower() == OCTOPUS_SUBPROTOCOL.lower()), None)
        stream = await request.accept_upgrade(accept_headers(verdict.key, subprotocol and
                                                             OCTOPUS_SUBPROTOCOL))
        remote = f"{info.conn.remote_ip}:{info.conn.remote_port}"
        ws = HalibutWebSocket.server(stream)
        await serve_polling(ws, thumbprint=info.conn.client_cert_thumbprint, trust=self.trust,
                            queues=self.queues, live=self.live, node=self.node, remote=remote,
                            keepalive=self.keepalive, shutdown=request.shutdown)
