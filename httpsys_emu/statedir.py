"""Where the persistent configuration lives: one directory holding state.db and certs/.

Resolution order: `--state-dir DIR`, then `$HTTPSYS_EMU_STATE_DIR`, then a per-user XDG default
(`$XDG_STATE_HOME/httpsys-emu`, else `~/.local/state/httpsys-emu`), or `/var/lib/httpsys-emu`
when running as root. The daemon and the CLI call the same function so they agree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

ENV_VAR = "HTTPSYS_EMU_STATE_DIR"
ROOT_DEFAULT = Path("/var/lib/httpsys-emu")
APP_NAME = "httpsys-emu"
STATE_DIR_MODE = 0o755


class StateDirError(Exception):
    """The state directory cannot be used; the message is one line, fit for a user."""


def resolve_state_dir(cli_value: str | os.PathLike[str] | None = None,
                      environ: Mapping[str, str] | None = None,
                      euid: int | None = None) -> Path:
    """The state directory to use (not created, not checked)."""
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


def ensure_state_dir(path: Path) -> Path:
    """Create `path` if needed and check it is a writable directory; StateDirError otherwise."""
    path = Path(path)
    try:
        if path.exists() and not path.is_dir():
            raise StateDirError(f"state directory {path} exists but is not a directory")
        path.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
    except StateDirError:
        raise
    except PermissionError:
        raise StateDirError(f"cannot create state directory {path}: permission denied") from None
    except FileExistsError:
        raise StateDirError(f"state directory {path} exists but is not a directory") from None
    except NotADirectoryError:
        raise StateDirError(f"cannot create state directory {path}: "
                            "a parent is not a directory") from None
    except OSError as exc:
        raise StateDirError(f"cannot create state directory {path}: "
                            f"{exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise StateDirError(f"state directory {path} is not writable: permission denied")
    return path
