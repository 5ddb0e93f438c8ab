"""Who owns each live registration, and where its requests go.

Registrations come from three places (static forwards in the store, processes on the control
socket, in-process handlers); the router only decides *who*, `delivery.deliver` decides *how*.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Union

from .handlers import HandlerTarget
from .store import ForwardTarget
from .urlprefix import UrlPrefix

Target = Union[HandlerTarget, ForwardTarget]


@dataclass(frozen=True)
class Owner:
    """The party that registered a prefix."""

    kind: str               # "forward" (static, from the store), "control" (a process), "in-process"
    pid: int | None = None
    uid: int | None = None
    user: str | None = None
    session: int = 0        # control connection number, 0 for forwards

    def describe(self) -> str:
        if self.kind == "forward":
            return "static forward"
        who = f"pid {self.pid}" if self.pid is not None else "?"
        return f"{self.kind} {who} uid {self.uid} ({self.user or '?'})"


@dataclass(frozen=True, eq=False)
class Registration:
    prefix: UrlPrefix
    target: Target
    owner: Owner
    client_cert: bool = False          # ask for a client certificate in the first handshake
    created: float = field(default_factory=time.time)

    def __str__(self) -> str:
        return f"{self.prefix} -> {self.target} ({self.owner.describe()})"
