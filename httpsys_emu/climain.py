"""The last line of defence of every console script: no traceback ever reaches the user."""

from __future__ import annotations

import sys
from typing import Any


def run_console_app(app: Any, prog: str) -> None:
    """Run a typer app; unexpected errors become one line on stderr and exit status 1."""
    try:
        app(prog_name=prog)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - the last line of defence
        sys.stderr.write(f"{prog}: unexpected error: {type(exc).__name__}: {exc}\n")
        sys.exit(1)
