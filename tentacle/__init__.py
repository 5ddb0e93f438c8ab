"""The Linux polling agent (Octopus Tentacle) that polls an Octopus Server over secure WebSockets.

Layout: `config` (the instance's XML settings), `instances` (the instance registry), `certificate`
(the agent's certificate), `options` (Tentacle's option grammar), `octopus_api` and `registration`
(register-with / poll-server), `service` (systemd or a supervised background process), `cli`.
The runtime that polls lives in `agent`, `poller` and `services/`.
"""

from __future__ import annotations

__version__ = "0.1.0"


class TentacleError(Exception):
    """A failure the CLI reports as one message and exit code 1 (Tentacle's ControlledFailure).

    Raise it (or a subclass) with the exact text the user should read; the CLI never shows a
    traceback for it.
    """
