"""The server half of the WebSocket opening handshake (RFC 6455 §4.2), pure.

The front door has already parsed and validated the HTTP head; this decides whether it is a
WebSocket upgrade we accept, and with which headers, or which refusal to send.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OCTOPUS_SUBPROTOCOL = "Octopus"


@dataclass(frozen=True)
class UpgradeAccepted:
    key: str
    subprotocols: tuple[str, ...]


@dataclass(frozen=True)
class UpgradeRefused:
    status: int
    headers: tuple[tuple[str, str], ...]
    reason: str


def _tokens(value: str | None) -> list[str]:
    return [t.strip() for t in (value or "").split(",") if t.strip()]


def is_upgrade_request(headers: dict[str, str]) -> bool:
    """Does the request ask for a WebSocket at all (else it gets the friendly page)?"""
    return ("websocket" in (t.lower() for t in _tokens(headers.get("upgrade")))
            and "upgrade" in (t.lower() for t in _tokens(headers.get("connection"))))


def check_upgrade(method: str, version: str, headers: dict[str, str]) -> UpgradeAccepted | UpgradeRefused:
    """`headers` maps lower-case names to values (first occurrence)."""
    if method != "GET" or version != "1.1":
        return UpgradeRefused(400, (), "a WebSocket upgrade must be GET over HTTP/1.1")
    if not is_upgrade_request(headers):
        return UpgradeRefused(400, (), "missing Upgrade: websocket / Connection: Upgrade")
    if headers.get("sec-websocket-version", "").strip() != "13":
        return UpgradeRefused(426, (("Sec-WebSocket-Version", "13"),),
                              "unsupported Sec-WebSocket-Version")
    key = headers.get("sec-websocket-key", "").strip()
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 16:
        return UpgradeRefused(400, (), "Sec-WebSocket-Key is not 16 bytes of base64")
    return UpgradeAccepted(key, tuple(_tokens(headers.get("sec-websocket-protocol"))))


def accept_value(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode("ascii")).digest()).decode("ascii")


def accept_headers(key: str, subprotocol: str | None) -> list[tuple[str, str]]:
    """The 101 response headers; no extensions are ever offered (no permessage-deflate)."""
    headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
               ("Sec-WebSocket-Accept", accept_value(key))]
    if subprotocol:
        headers.append(("Sec-WebSocket-Protocol", subprotocol))
    return headers
