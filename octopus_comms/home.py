"""The server home directory: where comms.db (the store) and server.json (the settings) live.

One resolution rule shared by the CLI and the serving process so they always agree:
`--home DIR`, else `$OCTOPUS_COMMS_HOME`, else `/var/lib/octopus-comms` when running as root,
else a per-user XDG default (`$XDG_STATE_HOME/octopus-comms`, else
`~/.local/state/octopus-comms`). The directory holds password and API-key hashes, so it is
created private (0700).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from httpsys_emu.appdirs import ensure_dir, resolve_dir

ENV_VAR = "OCTOPUS_COMMS_HOME"
ROOT_DEFAULT = Path("/var/lib/octopus-comms")
APP_NAME = "octopus-comms"
HOME_MODE = 0o700
DB_NAME = "comms.db"
SETTINGS_NAME = "server.json"


class HomeError(Exception):
    """The home directory cannot be used; the message is one line, fit for a user."""


def resolve_home(cli_value: str | os.PathLike[str] | None = None,
                 environ: Mapping[str, str] | None = None,
                 euid: int | None = None) -> Path:
    """The home directory to use (neither created nor checked)."""
    return resolve_dir(cli_value, ENV_VAR, ROOT_DEFAULT, APP_NAME, environ, euid)


def ensure_home(path: str | os.PathLike[str]) -> Path:
    """Create `path` (0700) if needed and check it is a writable directory; HomeError if not."""
    return ensure_dir(path, HOME_MODE, "home directory", HomeError)


def db_path(home: str | os.PathLike[str]) -> Path:
    """Where the store lives inside a home."""
    return Path(home) / DB_NAME


def settings_path(home: str | os.PathLike[str]) -> Path:
    """Where the server settings live inside a home."""
    return Path(home) / SETTINGS_NAME
