"""The Tentacle service contracts (spec §4) as dataclasses, with their .NET type names.

Members follow the .NET declaration order of `Octopus.Tentacle.Contracts` (Newtonsoft writes them
in that order). The older types also carry their legacy `Octopus.Shared.Contracts.X, Octopus.Shared`
names, which a real Tentacle writes; reading accepts either, matching on the short name. Enum
members keep their .NET names (`ScriptType.PowerShell`) because dictionary keys travel as those
names (`Scripts{"PowerShell": …}`), while enum values travel as int32.
"""

from __future__ import annotations

import datetime as _dt
import enum
from dataclasses import dataclass, field

from . import wire
from .messages import DataStream

CONTRACTS = "Octopus.Tentacle.Contracts"
SCRIPT_SERVICE_V2 = "Octopus.Tentacle.Contracts.ScriptServiceV2"
CAPABILITIES = "Octopus.Tentacle.Contracts.Capabilities"
LEGACY_NAMESPACE = "Octopus.Shared.Contracts"
LEGACY_ASSEMBLY = "Octopus.Shared"

SERVICE_SCRIPT = "IScriptService"
SERVICE_SCRIPT_V2 = "IScriptServiceV2"
SERVICE_FILE_TRANSFER = "IFileTransferService"
SERVICE_CAPABILITIES_V2 = "ICapabilitiesServiceV2"

DEFAULT_MUTEX_TIMEOUT = _dt.timedelta(milliseconds=2**31 - 1)
"""`TimeSpan.FromMilliseconds(int.MaxValue)`, what Octopus sends for "wait for the mutex forever"."""


def _name(namespace: str, cls: str) -> str:
    return f"{namespace}.{cls}, {CONTRACTS}"


def _legacy(cls: str) -> str:
    return f"{LEGACY_NAMESPACE}.{cls}, {LEGACY_ASSEMBLY}"


class ScriptType(enum.IntEnum):
    """Which shell runs a script body."""

    PowerShell = 0
    Bash = 1


class ScriptIsolationLevel(enum.IntEnum):
    """FullIsolation: one script at a time per mutex name."""

    NoIsolation = 0
    FullIsolation = 1


class ProcessState(enum.IntEnum):
    """Where a script is in its life."""

    Pending = 0
    Running = 1
    Complete = 2


class ProcessOutputSource(enum.IntEnum):
    """Which stream a log line came from."""

    StdOut = 0
    StdErr = 1
    Debug = 2


@wire.contract(_name(CONTRACTS, "ScriptTicket"), legacy=_legacy("ScriptTicket"))
@dataclass(frozen=True, kw_only=True)
class ScriptTicket:
    """Names a running script; chosen by the server for V2, by the agent for V1."""

    task_id: str = ""


@wire.contract(_name(CONTRACTS, "ScriptFile"), legacy=_legacy("ScriptFile"))
@dataclass(frozen=True, kw_only=True)
class ScriptFile:
    """A file placed next to the script; its bytes follow the message as a DataStream."""

    name: str = ""
    contents: DataStream | None = None
    encryption_password: str | None = None


@wire.contract(_name(CONTRACTS, "ProcessOutput"))
@dataclass(frozen=True, kw_only=True)
class ProcessOutput:
    """One log line of a script (a .NET DateTimeOffset, carried as a UTC BSON datetime)."""

    source: ProcessOutputSource | int = ProcessOutputSource.StdOut
    occurred: _dt.datetime = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
    text: str | None = None


@wire.contract(_name(CONTRACTS, "StartScriptCommand"), legacy=_legacy("StartScriptCommand"))
@dataclass(frozen=True, kw_only=True)
class StartScriptCommand:
    """IScriptService.StartScript: run `script_body` (or the `scripts` entry for our shell)."""

    script_body: str = ""
    isolation: ScriptIsolationLevel | int = ScriptIsolationLevel.NoIsolation
    scripts: dict[ScriptType | int, str] = field(default_factory=dict)
    files: list[ScriptFile] = field(default_factory=list)
    arguments: list[str] = field(default_factory=list)
    task_id: str | None = None
    script_isolation_mutex_timeout: _dt.timedelta = DEFAULT_MUTEX_TIMEOUT
    isolation_mutex_name: str | None = None


@wire.contract(_name(CONTRACTS, "ScriptStatusRequest"), legacy=_legacy("ScriptStatusRequest"))
@dataclass(frozen=True, kw_only=True)
class ScriptStatusRequest:
    """IScriptService.GetStatus: logs after `last_log_sequence`."""

    ticket: ScriptTicket = field(default_factory=ScriptTicket)
    last_log_sequence: wire.Int64 = 0


@wire.contract(_name(CONTRACTS, "ScriptStatusResponse"), legacy=_legacy("ScriptStatusResponse"))
@dataclass(frozen=True, kw_only=True)
class ScriptStatusResponse:
    """State, exit code and new log lines of a script (IScriptService)."""

    ticket: ScriptTicket = field(default_factory=ScriptTicket)
    logs: list[ProcessOutput] = field(default_factory=list)
    next_log_sequence: wire.Int64 = 0
    state: ProcessState | int = ProcessState.Pending
    exit_code: wire.Int32 = 0


@wire.contract(_name(CONTRACTS, "CancelScriptCommand"), legacy=_legacy("CancelScriptCommand"))
@dataclass(frozen=True, kw_only=True)
class CancelScriptCommand:
    """IScriptService.CancelScript."""

    ticket: ScriptTicket = field(default_factory=ScriptTicket)
    last_log_sequence: wire.Int64 = 0


@wire.contract(_name(CONTRACTS, "CompleteScriptCommand"), legacy=_legacy("CompleteScriptCommand"))
@dataclass(frozen=True, kw_only=True)
class CompleteScriptCommand:
    """IScriptService.CompleteScript: collect the last logs and clean up."""

    ticket: ScriptTicket = field(default_factory=ScriptTicket)
    last_log_sequence: wire.Int64 = 0


@wire.contract(_name(CONTRACTS, "UploadResult"), legacy=_legacy("UploadResult"))
@dataclass(frozen=True, kw_only=True)
class UploadResult:
    """IFileTransferService.UploadFile: where the file landed, its SHA-1 (lower-case hex), size."""

    full_path: str = ""
    hash: str = ""
    length: wire.Int64 = 0


@wire.contract(_name(SCRIPT_SERVICE_V2, "StartScriptCommandV2"))
@dataclass(frozen=True, kw_only=True)
class StartScriptCommandV2:
    """IScriptServiceV2.StartScript; idempotent for the same `script_ticket`."""

    script_ticket: ScriptTicket = field(default_factory=ScriptTicket)
    script_body: str = ""
    task_id: str | None = None
    duration_to_wait_for_script_to_finish: _dt.timedelta | None = None
    isolation: ScriptIsolationLevel | int = ScriptIsolationLevel.NoIsolation
    script_isolation_mutex_timeout: _dt.timedelta = DEFAULT_MUTEX_TIMEOUT
    isolation_mutex_name: str | None = None
    scripts: dict[ScriptType | int, str] = field(default_factory=dict)
    files: list[ScriptFile] = field(default_factory=list)
    arguments: list[str] = field(default_factory=list)


@wire.contract(_name(SCRIPT_SERVICE_V2, "ScriptStatusRequestV2"))
@dataclass(frozen=True, kw_only=True)
class ScriptStatusRequestV2:
    """IScriptServiceV2.GetStatus."""

    ticket: ScriptTicket = field(default_factory=ScriptTicket)
    last_log_sequence: wire.Int64 = 0


@wire.contract(_name(SCRIPT_SERVICE_V2, "ScriptStatusResponseV2"))
@dataclass(frozen=True, kw_only=True)
class ScriptStatusResponseV2:
    """State, exit code and new log lines of a script (IScriptServiceV2)."""

    ticket: ScriptTicket = field(default_factory=ScriptTicket)
    logs: list[ProcessOutput] = field(default_factory=list)
    next_log_sequence: wire.Int64 = 0
    state: ProcessState | int = ProcessState.Pending
    exit_code: wire.Int32 = 0


@wire.contract(_name(SCRIPT_SERVICE_V2, "CancelScriptCommandV2"))
@dataclass(frozen=True, kw_only=True)
class CancelScriptCommandV2:
    """IScriptServiceV2.CancelScript."""

    ticket: ScriptTicket = field(default_factory=ScriptTicket)
    last_log_sequence: wire.Int64 = 0


@wire.contract(_name(SCRIPT_SERVICE_V2, "CompleteScriptCommandV2"))
@dataclass(frozen=True, kw_only=True)
class CompleteScriptCommandV2:
    """IScriptServiceV2.CompleteScript (returns nothing)."""

    ticket: ScriptTicket = field(default_factory=ScriptTicket)


@wire.contract(_name(CAPABILITIES, "CapabilitiesResponseV2"))
@dataclass(frozen=True, kw_only=True)
class CapabilitiesResponseV2:
    """ICapabilitiesServiceV2.GetCapabilities: the service interfaces the agent implements."""

    supported_capabilities: list[str] = field(default_factory=list)


CONTRACT_TYPES: tuple[type, ...] = (
    ScriptTicket,
    StartScriptCommand,
    ScriptStatusRequest,
    ScriptStatusResponse,
    CancelScriptCommand,
    CompleteScriptCommand,
    ProcessOutput,
    ScriptFile,
    UploadResult,
    StartScriptCommandV2,
    ScriptStatusRequestV2,
    ScriptStatusResponseV2,
    CancelScriptCommandV2,
    CompleteScriptCommandV2,
    CapabilitiesResponseV2,
)
"""Every contract dataclass of spec §4."""

CONTRACT_ENUMS: tuple[type[enum.IntEnum], ...] = (
    ScriptType,
    ScriptIsolationLevel,
    ProcessState,
    ProcessOutputSource,
)
