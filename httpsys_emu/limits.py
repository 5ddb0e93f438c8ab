"""The limits and timers of HTTP.sys (spec httpsys.md §5) plus our caps, as one immutable value.

The store holds overrides; the front door reads them into a `Limits` on every reload so a CLI
change reaches new connections within a second.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Mapping


@dataclass(frozen=True)
class Limits:
    max_field_length: int = 16384          # one header line
    max_request_bytes: int = 16384         # request line + headers
    url_segment_max_length: int = 260
    url_segment_max_count: int = 255
    max_url_length: int = 16384
    max_headers: int = 100
    idle_connection: float = 120.0         # between requests
    header_wait: float = 120.0             # the whole head, absolute
    entity_body: float = 120.0             # between body reads
    drain_entity_body: float = 120.0
    request_queue: float = 120.0
    min_send_rate: int = 150               # bytes per second
    handshake_timeout: float = 10.0        # the TLS handshake, absolute
    max_connections: int = 20000
    max_connections_per_client: int = 2000
    request_queue_length: int = 1000
    max_body_bytes: int = 0                # 0 = unlimited
    drain_body_max: int = 1 << 20          # how much unread body we swallow to keep a connection
    upstream_connect_timeout: float = 10.0
    upstream_response_timeout: float = 120.0
    shutdown_deadline: float = 10.0
    tunnel_idle: float = 600.0             # an upgraded stream with no bytes either way
    linger: float = 2.0                    # after an error page: read and discard before close
    linger_max_bytes: int = 1 << 20        # ... but never more than this
    upstream_idle: float = 30.0            # a pooled upstream connection unused this long closes

    @classmethod
    def from_settings(cls, settings: Mapping[str, float | int]) -> "Limits":
        """Build from stored settings, ignoring names we do not know (older or newer schema)."""
        known = {f.name: f.type for f in fields(cls)}
        values: dict[str, float | int] = {}
        for name, value in settings.items():
            key = _ALIASES.get(name.lower(), name.lower())
            if key in known:
                default = getattr(cls, key)
                values[key] = type(default)(value)
        return replace(cls(), **values)

    def send_deadline(self, nbytes: int) -> float:
        """Seconds allowed for sending `nbytes` at the minimum send rate (at least one second)."""
        return max(1.0, nbytes / max(1, self.min_send_rate)) + 1.0


_ALIASES = {
    "idleconnectiontimeout": "idle_connection",
    "headerwaittimeout": "header_wait",
    "maxfieldlength": "max_field_length",
    "maxrequestbytes": "max_request_bytes",
    "urlsegmentmaxlength": "url_segment_max_length",
    "urlsegmentmaxcount": "url_segment_max_count",
    "entitybody": "entity_body",
    "entitybodytimeout": "entity_body",
    "drainentitybody": "drain_entity_body",
    "requestqueue": "request_queue",
    "minsendrate": "min_send_rate",
    "minsendratebytespersecond": "min_send_rate",
    "requestqueuelength": "request_queue_length",
}
