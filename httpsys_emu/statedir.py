"""Where the persistent configuration lives: one directory holding state.db and certs/.

Resolution order: `--state-dir DIR`, then `$HTTPSYS_EMU_STATE_DIR`, then a per-user XDG default
(`$XDG_STATE_HOME/httpsys-emu`, else `~/.local/state/httpsys-emu`), or `/var/lib/httpsys-emu`
when running as root. The daemon and the CLI call the same function so they agree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from httpsys_emu.appdirs import ensure_dir, resolve_dir

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
    return resolve_dir(cli_value, ENV_VAR, ROOT_DEFAULT, APP_NAME, environ, euid)


def ensure_state_dir(path: Path) -> Path:
    """Create `path` if needed and check it is a writable directory; StateDirError otherwise."""
    return ensure_dir(path, STATE_DIR_MODE, "state directory", StateDirError)
