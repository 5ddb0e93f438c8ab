"""ICapabilitiesServiceV2: tells Octopus Server which service contracts this agent implements.

Why it matters: the server picks IScriptServiceV2 (server-chosen, idempotent tickets) over the
old IScriptService only when the agent lists it here.
"""

from __future__ import annotations

from collections.abc import Sequence

from octopus_comms.halibut.contracts import (
    SERVICE_FILE_TRANSFER,
    SERVICE_SCRIPT,
    SERVICE_SCRIPT_V2,
    CapabilitiesResponseV2,
)

from . import Call, Operation

__all__ = ["CAPABILITIES", "CapabilitiesService"]

CAPABILITIES: tuple[str, ...] = (SERVICE_SCRIPT, SERVICE_FILE_TRANSFER, SERVICE_SCRIPT_V2)
"""In the order the real Tentacle lists them."""


class CapabilitiesService:
    """`ICapabilitiesServiceV2`."""

    contract = "ICapabilitiesServiceV2"
    implementation = "Octopus.Tentacle.Services.Capabilities.CapabilitiesServiceV2"

    def __init__(self, capabilities: Sequence[str] = CAPABILITIES) -> None:
        self.capabilities = tuple(capabilities)

    def operations(self) -> Sequence[Operation]:
        return (Operation("GetCapabilities", self.get_capabilities, ()),)

    async def get_capabilities(self, call: Call) -> CapabilitiesResponseV2:
        return CapabilitiesResponseV2(supported_capabilities=list(self.capabilities))
