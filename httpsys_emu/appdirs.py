"""Where our programs keep their state: one resolution rule and one checked creation, shared by
the front door's state directory and the comms server's home.

Order: the command-line value, then the environment variable, then `/var/lib/<app>` for root,
else the XDG state directory (`$XDG_STATE_HOME/<app>`, else `~/.local/state/<app>`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def resolve_dir(cli_value: str | os.PathLike[str] | None, env_var: str, root_default: Path,
                app_name: str, environ: Mapping[str, str] | None = None,
                euid: int | None = None) -> Path:
    """The directory to use (neither created nor checked)."""
    env = os.environ if environ is None else environ
    if cli_value is not None and str(cli_value) != "":
        return Path(cli_value).expanduser()
    if env.get(env_var):
        return Path(env[env_var]).expanduser()
    uid = os.geteuid() if euid is None else euid
    if uid == 0:
        return root_default
    xdg = env.get("XDG_STATE_HOME")
    if xdg and Path(xdg).is_absolute():  # the XDG spec says relative values are ignored
        return Path(xdg) / app_name
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "state" / app_name


def ensure_dir(path: str | os.PathLike[str], mode: int, noun: str,
               error: type[Exception]) -> Path:
    """Create `path` with `mode` if needed and check it is a writable directory.

    Failures raise `error` with one line fit for a user (`noun` names the directory, e.g.
    "state directory").
    """
    directory = Path(path)
    try:
        if directory.exists() and not directory.is_dir():
            raise error(f"{noun} {directory} exists but is not a directory")
        directory.mkdir(mode=mode, parents=True, exist_ok=True)
    except error:
        raise
    except PermissionError:
        raise error(f"cannot create {noun} {directory}: permission denied") from None
    except FileExistsError:
        raise error(f"{noun} {directory} exists but is not a directory") from None
    except NotADirectoryError:
        raise error(f"cannot create {noun} {directory}: a parent is not a directory") from None
    except OSError as exc:
        raise error(f"cannot create {noun} {directory}: {exc.strerror or exc}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise error(f"{noun} {directory} is not writable: permission denied")
    return directory
