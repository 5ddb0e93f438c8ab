"""Server configuration kept in `<home>/server.json`: what `octopus-comms configure` sets.

The same knobs as `Octopus.Server.exe configure`: the comms WebSocket listen prefix
(`--commsListenWebSocket`, empty turns it off) and the web (REST API / portal) listen prefixes
(`--webListenPrefixes`, a comma list), plus discovery information the serving process writes so
other commands can find the API (`ApiUrl`, `ApiThumbprint`). Prefixes are validated with the
front door's own UrlPrefix parser, so anything stored here is something the front door accepts.
Writes are atomic (temp file, fsync, rename): a reader sees the old file or the new one. Keys this
version does not know are kept as they are, so a newer writer's settings survive an older one.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from httpsys_emu.atomic import write_atomic
from httpsys_emu.urlprefix import parse_prefix
from httpsys_emu.winerror import WinError
from octopus_comms.home import settings_path

SETTINGS_MODE = 0o600
_THUMBPRINT_RE = re.compile(r"[0-9A-Fa-f]{40}")
_KNOWN_KEYS = ("CommsListenWebSocket", "WebListenPrefixes", "ApiUrl", "ApiThumbprint")


class SettingsError(Exception):
    """A setting is invalid or server.json is unreadable; the message is one line for a user."""


@dataclass(frozen=True)
class ServerSettings:
    """The server's configuration; prefixes are stored in their validated, printed form."""

    comms_listen_websocket: tuple[str, ...] = ()
    web_listen_prefixes: tuple[str, ...] = ()
    api_url: str | None = None          # where the REST API answers, as `serve` last bound it
    api_thumbprint: str | None = None   # SHA-1 of the TLS certificate in front of ApiUrl
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def comms_enabled(self) -> bool:
        return bool(self.comms_listen_websocket)

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = dict(self.extra)
        document.update({
            "CommsListenWebSocket": list(self.comms_listen_websocket),
            "WebListenPrefixes": list(self.web_listen_prefixes),
            "ApiUrl": self.api_url,
            "ApiThumbprint": self.api_thumbprint,
        })
        return document

    @classmethod
    def from_json(cls, document: Any) -> ServerSettings:
        """Validate a parsed server.json; SettingsError for anything malformed."""
        if not isinstance(document, dict):
            raise SettingsError("server.json must hold a JSON object")
        comms = _string_list(document.get("CommsListenWebSocket", []), "CommsListenWebSocket")
        web = _string_list(document.get("WebListenPrefixes", []), "WebListenPrefixes")
        api_url = document.get("ApiUrl")
        if api_url is not None and not isinstance(api_url, str):
            raise SettingsError("ApiUrl in server.json must be a string or null")
        thumbprint = document.get("ApiThumbprint")
        if thumbprint is not None:
            thumbprint = normalize_thumbprint(thumbprint)
        extra = {k: v for k, v in document.items() if k not in _KNOWN_KEYS}
        return cls(comms_listen_websocket=tuple(validate_comms_prefix(p) for p in comms),
                   web_listen_prefixes=tuple(validate_web_prefix(p) for p in web),
                   api_url=api_url or None, api_thumbprint=thumbprint, extra=extra)


def _string_list(value: Any, name: str) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SettingsError(f"{name} in server.json must be a list of strings")
    return list(value)


def normalize_thumbprint(value: Any) -> str:
    """40 hex digits, upper-case; SettingsError otherwise."""
    if not isinstance(value, str) or not _THUMBPRINT_RE.fullmatch(value.strip()):
        raise SettingsError(f"{value!r} is not a SHA-1 thumbprint (40 hex digits)")
    return value.strip().upper()


def _prefix(text: str, what: str, schemes: tuple[str, ...]) -> str:
    try:
        prefix = parse_prefix(text.strip())
    except WinError as exc:
        raise SettingsError(f"invalid {what} {text!r}: {exc.detail or exc}") from None
    if prefix.scheme not in schemes:
        raise SettingsError(f"invalid {what} {text!r}: the scheme must be "
                            + " or ".join(schemes))
    return str(prefix)


def validate_comms_prefix(text: str) -> str:
    """A comms WebSocket prefix (https only: agents connect with wss://)."""
    return _prefix(text, "comms WebSocket prefix", ("https",))


def validate_web_prefix(text: str) -> str:
    """A web listen prefix for the REST API and portal."""
    return _prefix(text, "web listen prefix", ("http", "https"))


def parse_prefix_list(text: str, validate: Any) -> tuple[str, ...]:
    """A comma list as Octopus.Server.exe takes it; empty items are ignored, duplicates dropped."""
    result: list[str] = []
    for item in text.split(","):
        if item.strip():
            value = validate(item)
            if value not in result:
                result.append(value)
    return tuple(result)


def load_settings(home: str | os.PathLike[str]) -> ServerSettings:
    """Read `<home>/server.json`; defaults when it does not exist yet."""
    path = settings_path(home)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return ServerSettings()
    except OSError as exc:
        raise SettingsError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SettingsError(f"{path} is not valid JSON: {exc}") from None
    return ServerSettings.from_json(document)


def save_settings(home: str | os.PathLike[str], settings: ServerSettings) -> None:
    """Replace `<home>/server.json` atomically."""
    path = settings_path(home)
    data = (json.dumps(settings.to_json(), indent=2, sort_keys=False) + "\n").encode("utf-8")
    try:
        write_atomic(Path(path), data, SETTINGS_MODE)
    except OSError as exc:
        raise SettingsError(f"cannot write {path}: {exc.strerror or exc}") from None


def update_settings(home: str | os.PathLike[str], **changes: Any) -> ServerSettings:
    """Load, apply `changes` (ServerSettings field names), save; returns the new settings."""
    settings = replace(load_settings(home), **changes)
    save_settings(home, settings)
    return settings
