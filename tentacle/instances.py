"""The instance registry: which Tentacle instances exist on this machine, and their config files.

Why the real layout: an operator who knows the real Linux Tentacle finds things where they expect
them, and a registry written by the real Tentacle is read here. The real one keeps one small JSON
file per instance, `{"Name": "Tentacle", "ConfigurationFilePath": "/etc/octopus/Tentacle/…"}`,
named after the instance in lower case with spaces turned into dashes, in
`<machine configuration home>/Tentacle/Instances/`. The machine configuration home is `/etc/octopus`
unless `$TentacleMachineConfigurationHomeDirectory` relocates it (the real Tentacle honours that
variable too).

Where the registry lives, first match wins:
  1. `$TENTACLE_INSTANCES_DIR`: the `Instances` directory itself (tests, side-by-side installs);
  2. `$TentacleMachineConfigurationHomeDirectory/Tentacle/Instances`;
  3. root: `/etc/octopus/Tentacle/Instances`;
  4. anyone else: `$XDG_CONFIG_HOME/octopus/Tentacle/Instances` (`~/.config/octopus/…`).
Default configuration files follow the real install script, `<base>/<name>/tentacle-<name>.config`
with `<base>` = `/etc/octopus` for root and `$XDG_CONFIG_HOME/octopus` otherwise; the instance's
home defaults to the directory of its configuration file.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from httpsys_emu.atomic import remove_durably, write_atomic
from tentacle import TentacleError

APPLICATION_NAME = "Tentacle"
DEFAULT_INSTANCE = "Tentacle"
INSTANCES_DIR_ENV = "TENTACLE_INSTANCES_DIR"
MACHINE_CONFIG_HOME_ENV = "TentacleMachineConfigurationHomeDirectory"
STANDARD_MACHINE_CONFIG_HOME = Path("/etc/octopus")
REGISTRY_SUFFIX = ".config"
_MAX_ENTRY_BYTES = 64 * 1024
_FORBIDDEN_NAME_CHARS = re.compile(r"[/\\\x00-\x1f\x7f]")


class InstanceError(TentacleError):
    """An instance is unknown, ambiguous, or its registry entry cannot be read or written."""


@dataclass(frozen=True)
class InstanceRecord:
    """One registry entry: an instance name and the path of its configuration file."""

    name: str
    config_path: Path


def is_root() -> bool:
    return os.geteuid() == 0


def _xdg_config_home() -> Path:
    value = os.environ.get("XDG_CONFIG_HOME", "").strip()
    return Path(value) if value and os.path.isabs(value) else Path.home() / ".config"


def machine_config_home() -> Path:
    """The machine configuration home (`/etc/octopus` for root, XDG for others, or relocated)."""
    custom = os.environ.get(MACHINE_CONFIG_HOME_ENV, "").strip()
    if custom:
        return Path(custom)
    return STANDARD_MACHINE_CONFIG_HOME if is_root() else _xdg_config_home() / "octopus"


def instances_dir() -> Path:
    """The registry directory, after the environment overrides (see the module docstring)."""
    direct = os.environ.get(INSTANCES_DIR_ENV, "").strip()
    if direct:
        return Path(direct)
    return machine_config_home() / APPLICATION_NAME / "Instances"


def default_config_path(name: str) -> Path:
    """`<base>/<name>/tentacle-<name>.config`, as the real Linux install script lays it out."""
    return machine_config_home() / name / f"tentacle-{name}.config"


def validate_instance_name(name: str) -> str:
    """The name, stripped; InstanceError when it cannot be used as a file name."""
    cleaned = name.strip()
    if not cleaned or cleaned in (".", "..") or _FORBIDDEN_NAME_CHARS.search(cleaned):
        raise InstanceError(f"'{name}' is not a valid instance name: use letters, digits, "
                            "spaces, dots, dashes or underscores.")
    return cleaned


def registry_file_name(name: str) -> str:
    """The real Tentacle's file name for an instance: lower case, spaces as dashes."""
    return name.replace(" ", "-").lower() + REGISTRY_SUFFIX


def encode_record(record: InstanceRecord) -> bytes:
    """The registry entry as Newtonsoft writes it (indented two spaces)."""
    document = {"Name": record.name, "ConfigurationFilePath": str(record.config_path)}
    return json.dumps(document, indent=2, ensure_ascii=False).encode("utf-8")


def decode_record(data: bytes) -> InstanceRecord:
    """Parse a registry entry; member names match case-insensitively (Newtonsoft)."""
    try:
        document = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    fields = {str(k).lower(): v for k, v in document.items()}
    name, path = fields.get("name"), fields.get("configurationfilepath")
    if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
        raise ValueError("Name and ConfigurationFilePath are required")
    return InstanceRecord(name=name, config_path=Path(path))


class InstanceRegistry:
    """The registry directory: list, find (case-insensitively), register and delete instances."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory if directory is not None else instances_dir()

    def list(self) -> list[InstanceRecord]:
        """Every readable entry, sorted by name. Unreadable entries are skipped, not fatal, so one
        corrupt file does not lock the operator out of every other instance."""
        records = []
        try:
            entries = sorted(self.directory.iterdir())
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise InstanceError(f"Unable to read the instance registry {self.directory}: "
                                f"{exc.strerror}") from exc
        for entry in entries:
            if not entry.name.endswith(REGISTRY_SUFFIX) or not entry.is_file():
                continue
            try:
                with entry.open("rb") as handle:
                    data = handle.read(_MAX_ENTRY_BYTES + 1)
                if len(data) > _MAX_ENTRY_BYTES:
                    continue
                records.append(decode_record(data))
            except (OSError, ValueError):
                continue
        return sorted(records, key=lambda r: r.name)

    def names_text(self) -> str:
        return ", ".join(sorted((r.name for r in self.list()), key=str.lower))

    def find(self, name: str) -> InstanceRecord | None:
        """The instance called `name`, ignoring case; an exact-case match breaks ties."""
        matches = [r for r in self.list() if r.name.lower() == name.lower()]
        if len(matches) == 1:
            return matches[0]
        exact = [r for r in matches if r.name == name]
        if exact:
            return exact[0]
        if matches:
            raise InstanceError(f"Instance {name} of {APPLICATION_NAME} could not be matched to "
                                f"one of the existing instances: {self.names_text()}.")
        return None

    def require(self, name: str | None) -> InstanceRecord:
        """The named instance, or the default one (`Tentacle`, else the only one), like the real
        Tentacle; InstanceError with the real messages otherwise."""
        if name:
            record = self.find(name)
            if record is None:
                raise InstanceError(f"Instance {name} of {APPLICATION_NAME} has not been "
                                    "configured on this machine. Available instances: "
                                    f"{self.names_text()}.")
            return record
        records = self.list()
        for record in records:
            if record.name == DEFAULT_INSTANCE:
                return record
        if len(records) == 1:
            return records[0]
        if len(records) > 1:
            raise InstanceError(f"There is more than one instance of {APPLICATION_NAME} "
                                "configured on this machine. Please pass --instance=INSTANCENAME "
                                "when invoking this command to target a specific instance. "
                                f"Available instances: {self.names_text()}.")
        raise InstanceError(f"Unable to find default instance of {APPLICATION_NAME}. Available "
                            f"instances: {self.names_text()}.")

    def find_by_config_path(self, config_path: Path) -> InstanceRecord | None:
        target = _comparable(config_path)
        for record in self.list():
            if _comparable(record.config_path) == target:
                return record
        return None

    def entry_path(self, name: str) -> Path:
        return self.directory / registry_file_name(name)

    def register(self, record: InstanceRecord) -> Path:
        """Write (or overwrite) the entry for `record.name`; returns the entry's path."""
        path = self.entry_path(record.name)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_atomic(path, encode_record(record), mode=0o644)
        except OSError as exc:
            raise InstanceError(f"Unable to write file '{path}' as user "
                                f"'{_user_name()}'. Please check file permissions.") from exc
        return path

    def delete(self, name: str) -> bool:
        """Remove the entry; False when there was none."""
        path = self.entry_path(name)
        try:
            remove_durably(path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise InstanceError(f"Unable to delete file '{path}' as user "
                                f"'{_user_name()}'. Please check file permissions.") from exc
        return True


def _comparable(path: Path) -> str:
    return os.path.normpath(os.path.abspath(os.fspath(path)))


def _user_name() -> str:
    try:
        import pwd
        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return str(os.geteuid())
