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
    env = os.environ if environ is None else environ
    if cli_value is not None and str(cli_value) != "":
        return Path(cli_value).expanduser()
    if env.get(ENV_VAR):
        return Path(env[ENV_VAR]).expanduser()
    uid = os.geteuid() if euid is None else euid
    if uid == 0:
        return ROOT_DEFAULT
    xdg = env.get("XDG_STATE_HOME")
    if xdg and Path(xdg).is_absolute():  # the XDG spec says relative values are ignored
        return Path(xdg) / APP_NAME
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "state" / APP_NAME


def ensure_home(path: str | os.PathLike[str]) -> Path:
    """Create `path` (0700) if needed and check it is a writable directory; HomeError if not."""
    home = Path(path)
    try:
        if home.exists() and not home.is_dir():
            raise HomeError(f"home directory {home} exists but is not a directory")
        home.mkdir(mode=HOME_MODE, parents=True, exist_ok=True)
    except HomeError:
        raise
    except PermissionError:
        raise HomeError(f"cannot create home directory {home}: permission denied") from None
    except FileExistsError:
        raise HomeError(f"home directory {home} exists but is not a directory") from None
    except NotADirectoryError:
        raise HomeError(f"cannot create home directory {home}: "
                        "a parent is not a directory") from None
    except OSError as exc:
        raise HomeError(f"cannot create home directory {home}: {exc.strerror or exc}") from None
    if not os.access(home, os.W_OK | os.X_OK):
        raise HomeError(f"home directory {home} is not writable: permission denied")
    return home


def db_path(home: str | os.PathLike[str]) -> Path:
    """Where the store lives inside a home."""
    return Path(home) / DB_NAME


def settings_path(home: str | os.PathLike[str]) -> Path:
    """Where the server settings live inside a home."""
    return Path(home) / SETTINGS_NAME
