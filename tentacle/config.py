"""One instance's configuration: the real Tentacle's XML settings file, read and written faithfully.

Why the real format: a configuration written by the real Linux Tentacle must load here, and ours
must look like one to an operator (and to the real Tentacle). The file is

    <?xml version="1.0" encoding="utf-8"?>
    <octopus-settings xmlns:xsd="…" xmlns:xsi="…">
      <set key="Octopus.Home">/etc/octopus/Tentacle</set>
      …
    </octopus-settings>

with keys sorted, booleans in lower case, `Tentacle.Communication.TrustedOctopusServers` a compact
JSON array, and `Tentacle.Certificate` the base64 PFX (see `certificate`). Keys we do not model
are kept in `TentacleConfig.extra` and written back unchanged. Files are replaced atomically with
mode 0600 (they hold the private key); `update_config` serialises read-modify-write cycles of
concurrent CLI commands with an advisory lock on the directory.

The parser and renderer are pure (`parse_settings_xml`, `render_settings_xml`); documents with a
DOCTYPE are refused, so no entity expansion ever happens.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import xml.parsers.expat
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from httpsys_emu.atomic import write_atomic
from tentacle import TentacleError
from tentacle.certificate import (
    CertificateError,
    decode_certificate_setting,
    default_machine_key_paths,
    encode_certificate_setting,
    load_machine_keys,
    thumbprint_of_pem,
)
from tentacle.instances import DEFAULT_INSTANCE, InstanceRegistry, is_root

KEY_HOME = "Octopus.Home"
KEY_THUMBPRINT = "Tentacle.CertificateThumbprint"
KEY_THUMBPRINT_MISSPELLED = "Tentacle.CertificateThumprint"  # written by some real versions
KEY_CERTIFICATE = "Tentacle.Certificate"
KEY_NO_LISTEN = "Tentacle.Services.NoListen"
KEY_PORT = "Tentacle.Services.PortNumber"
KEY_POLLING_COUNT = "Tentacle.Communication.PollingConnectionCount"
KEY_TRUSTED_SERVERS = "Tentacle.Communication.TrustedOctopusServers"
KEY_APP_DIR = "Tentacle.Deployment.ApplicationDirectory"
MODELLED_KEYS = frozenset({KEY_HOME, KEY_THUMBPRINT, KEY_CERTIFICATE, KEY_NO_LISTEN, KEY_PORT,
                           KEY_POLLING_COUNT, KEY_TRUSTED_SERVERS, KEY_APP_DIR})

DEFAULT_PORT = 10933
DEFAULT_POLLING_CONNECTION_COUNT = 1
ROOT_DEFAULT_APP_DIR = Path("/home/Octopus/Applications")  # the real Linux default
COMMUNICATION_STYLE_PASSIVE = 1  # TentaclePassive: the server calls the agent
COMMUNICATION_STYLE_ACTIVE = 2  # TentacleActive: the agent polls the server
_STYLE_NAMES = {"none": 0, "tentaclepassive": 1, "tentacleactive": 2}

XML_ROOT = "octopus-settings"
XML_SETTING = "set"
XML_NAMESPACES = ('xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
                  'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"')
UTF8_BOM = b"\xef\xbb\xbf"
CONFIG_MODE = 0o600
DIRECTORY_MODE = 0o700
MAX_CONFIG_BYTES = 16 * 1024 * 1024

# XML 1.0 cannot carry these characters at all, escaped or not.
_NOT_XML_CHAR = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


class ConfigError(TentacleError):
    """The configuration file is missing, unreadable, or holds a value we cannot interpret."""


# ------------------------------------------------------------------ the data model

@dataclass(frozen=True)
class TrustedServer:
    """One entry of `Tentacle.Communication.TrustedOctopusServers`.

    `communication_style` is 1 (Passive) or 2 (Active, i.e. TentacleActive polling); `address` is
    the server's polling address (`wss://host:443/OctopusComms` or `https://host:10943/`);
    `subscription_id` is `poll://<20 letters>/`, shared by every node of an HA cluster.
    """

    thumbprint: str
    communication_style: int
    address: str | None
    squid: str | None
    subscription_id: str | None

    def to_json(self) -> dict[str, Any]:
        """The entry as Newtonsoft writes it (member order of the real class)."""
        return {"Thumbprint": self.thumbprint, "CommunicationStyle": self.communication_style,
                "Address": self.address, "Squid": self.squid,
                "SubscriptionId": self.subscription_id}

    @classmethod
    def from_json(cls, document: Any) -> TrustedServer:
        """Read one entry; names match case-insensitively, unknown members are ignored."""
        if not isinstance(document, dict):
            raise ValueError("a trusted server entry must be a JSON object")
        fields = {str(k).lower(): v for k, v in document.items()}
        thumbprint = fields.get("thumbprint")
        if not isinstance(thumbprint, str) or not thumbprint:
            raise ValueError("a trusted server entry needs a Thumbprint")
        style = fields.get("communicationstyle", COMMUNICATION_STYLE_PASSIVE)
        if isinstance(style, str):
            style = _STYLE_NAMES.get(style.strip().lower(), style)
            if isinstance(style, str):
                try:
                    style = int(style)
                except ValueError as exc:
                    raise ValueError(f"unknown CommunicationStyle {style!r}") from exc
        if not isinstance(style, int) or isinstance(style, bool):
            raise ValueError("CommunicationStyle must be a number")

        def text(name: str) -> str | None:
            value = fields.get(name)
            if value is None:
                return None
            if not isinstance(value, str):
                raise ValueError(f"{name} must be a string")
            return value

        return cls(thumbprint=thumbprint, communication_style=style, address=text("address"),
                   squid=text("squid"), subscription_id=text("subscriptionid"))


@dataclass(frozen=True)
class TentacleConfig:
    """Everything the agent and the CLI need from one instance's configuration file.

    `extra` holds every other `<set key=…>` verbatim; `save_config` writes it back.
    """

    instance: str
    config_path: Path
    home: Path
    app_dir: Path
    certificate_pem: bytes | None = field(repr=False)
    private_key_pem: bytes | None = field(repr=False)
    thumbprint: str | None
    trusted_servers: tuple[TrustedServer, ...]
    polling_connection_count: int
    no_listen: bool
    listen_port: int
    extra: dict[str, str]


# ------------------------------------------------------------------ the XML settings document

def parse_settings_xml(data: bytes) -> dict[str, str]:
    """`<octopus-settings><set key=…>value</set>…` → {key: value} (a later duplicate wins).

    Raises ValueError for anything that is not such a document, including any DOCTYPE.
    An empty element reads as "".
    """
    parser = xml.parsers.expat.ParserCreate()
    settings: dict[str, str] = {}
    state: dict[str, Any] = {"depth": 0, "key": None, "text": [], "root": None}

    def refuse(*_args: Any) -> None:
        raise ValueError("DOCTYPE and entity declarations are not allowed")

    def start(name: str, attributes: dict[str, str]) -> None:
        state["depth"] += 1
        depth = state["depth"]
        if depth == 1:
            state["root"] = name
            if name != XML_ROOT:
                raise ValueError(f"the root element must be <{XML_ROOT}>, not <{name}>")
        elif depth == 2 and name == XML_SETTING:
            key = attributes.get("key")
            if key is None:
                raise ValueError("a <set> element needs a key attribute")
            state["key"] = key
            state["text"] = []
        elif depth > 2 and state["key"] is not None:
            raise ValueError(f"<{XML_SETTING}> elements hold text only")

    def end(name: str) -> None:
        if state["depth"] == 2 and state["key"] is not None:
            settings[state["key"]] = "".join(state["text"])
            state["key"] = None
        state["depth"] -= 1

    def characters(text: str) -> None:
        if state["depth"] == 2 and state["key"] is not None:
            state["text"].append(text)

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = characters
    try:
        parser.Parse(data, True)
    except xml.parsers.expat.ExpatError as exc:
        raise ValueError(f"not well-formed XML: {exc}") from exc
    if state["root"] is None:
        raise ValueError("the document is empty")
    return settings


def _check_xml_text(text: str, what: str) -> None:
    if _NOT_XML_CHAR.search(text):
        raise ValueError(f"{what} contains a control character that XML cannot hold")


def _escape_text(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("\r", "&#xD;"))


def _escape_attribute(text: str) -> str:
    return (_escape_text(text).replace('"', "&quot;").replace("\n", "&#xA;")
            .replace("\t", "&#x9;"))


def render_settings_xml(settings: Mapping[str, str]) -> bytes:
    """The settings file as .NET's XmlSerializer writes it: UTF-8 with BOM, keys sorted, two-space
    indent, `<set key="K" />` for an empty value. ValueError for text XML cannot represent."""
    lines = ['<?xml version="1.0" encoding="utf-8"?>', f"<{XML_ROOT} {XML_NAMESPACES}>"]
    for key in sorted(settings):
        value = settings[key]
        _check_xml_text(key, f"the key {key!r}")
        _check_xml_text(value, f"the value of {key}")
        attribute = _escape_attribute(key)
        if value:
            lines.append(f'  <{XML_SETTING} key="{attribute}">{_escape_text(value)}'
                         f"</{XML_SETTING}>")
        else:
            lines.append(f'  <{XML_SETTING} key="{attribute}" />')
    lines.append(f"</{XML_ROOT}>")
    return UTF8_BOM + "\n".join(lines).encode("utf-8")


# ------------------------------------------------------------------ settings ↔ TentacleConfig

def encode_trusted_servers(servers: tuple[TrustedServer, ...]) -> str:
    """The compact JSON array Newtonsoft writes for TrustedOctopusServers."""
    return json.dumps([s.to_json() for s in servers], separators=(",", ":"), ensure_ascii=False)


def decode_trusted_servers(text: str) -> tuple[TrustedServer, ...]:
    if not text.strip():
        return ()
    document = json.loads(text)
    if document is None:
        return ()
    if not isinstance(document, list):
        raise ValueError("TrustedOctopusServers must be a JSON array")
    return tuple(TrustedServer.from_json(entry) for entry in document)


def parse_bool(text: str) -> bool:
    """.NET's bool.Parse: `true`/`false` in any case (also JSON's), surrounding space ignored."""
    cleaned = text.strip().lower()
    if cleaned in ("true", "false"):
        return cleaned == "true"
    raise ValueError(f"'{text}' is not a valid boolean (true or false)")


def format_bool(value: bool) -> str:
    """Booleans as the real Tentacle writes them into the XML file (JSON style)."""
    return "true" if value else "false"


def default_app_dir(home: Path) -> Path:
    return ROOT_DEFAULT_APP_DIR if is_root() else home / "Applications"


def _rooted(value: str, config_path: Path) -> Path:
    path = Path(value)
    return path if path.is_absolute() else config_path.parent / path


def config_from_settings(settings: Mapping[str, str], config_path: Path, instance: str,
                         machine_keys: list[tuple[bytes, bytes]] | None = None,
                         *, tolerate_bad_certificate: bool = False) -> TentacleConfig:
    """Interpret the settings of one file. ConfigError names the key that cannot be read."""
    extra = {k: v for k, v in settings.items() if k not in MODELLED_KEYS}

    def number(key: str, default: int, low: int, high: int) -> int:
        text = settings.get(key, "").strip()
        if not text:
            return default
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f"The setting {key} in {config_path} is not a number: "
                              f"'{text}'.") from None
        if not low <= value <= high:
            raise ConfigError(f"The setting {key} in {config_path} must be between {low} and "
                              f"{high}, but is {value}.")
        return value

    home_text = settings.get(KEY_HOME, "").strip()
    home = _rooted(home_text, config_path) if home_text else config_path.parent
    app_text = settings.get(KEY_APP_DIR, "").strip()
    app_dir = _rooted(app_text, config_path) if app_text else default_app_dir(home)
    try:
        no_listen = parse_bool(settings.get(KEY_NO_LISTEN, "") or "false")
    except ValueError:
        raise ConfigError(f"The setting {KEY_NO_LISTEN} in {config_path} is not true or false: "
                          f"'{settings.get(KEY_NO_LISTEN)}'.") from None
    try:
        trusted = decode_trusted_servers(settings.get(KEY_TRUSTED_SERVERS, ""))
    except ValueError as exc:
        raise ConfigError(f"The setting {KEY_TRUSTED_SERVERS} in {config_path} cannot be read: "
                          f"{exc}.") from None

    certificate_pem = private_key_pem = None
    thumbprint = (settings.get(KEY_THUMBPRINT) or settings.get(KEY_THUMBPRINT_MISSPELLED)
                  or "").strip().upper() or None
    encoded = settings.get(KEY_CERTIFICATE, "").strip()
    if encoded:
        keys = machine_keys if machine_keys is not None else load_machine_keys(
            default_machine_key_paths())
        try:
            decoded = decode_certificate_setting(encoded, keys)
        except CertificateError as exc:
            if not tolerate_bad_certificate:
                raise ConfigError(f"{exc} ({config_path})") from None
            extra[KEY_CERTIFICATE] = settings[KEY_CERTIFICATE]
        else:
            certificate_pem, private_key_pem = decoded.cert_pem, decoded.key_pem
            thumbprint = decoded.thumbprint
    return TentacleConfig(
        instance=instance, config_path=config_path, home=home, app_dir=app_dir,
        certificate_pem=certificate_pem, private_key_pem=private_key_pem, thumbprint=thumbprint,
        trusted_servers=trusted,
        polling_connection_count=number(KEY_POLLING_COUNT, DEFAULT_POLLING_CONNECTION_COUNT,
                                        1, 10_000),
        no_listen=no_listen, listen_port=number(KEY_PORT, DEFAULT_PORT, 1, 65535), extra=extra)


def settings_from_config(config: TentacleConfig) -> dict[str, str]:
    """The `<set>` entries for `config`: every modelled key, then `extra` (which never overrides
    a modelled key, except a certificate we kept verbatim because it could not be decoded)."""
    settings = {k: v for k, v in config.extra.items() if k not in MODELLED_KEYS}
    settings[KEY_HOME] = str(config.home)
    settings[KEY_APP_DIR] = str(config.app_dir)
    settings[KEY_NO_LISTEN] = format_bool(config.no_listen)
    settings[KEY_PORT] = str(config.listen_port)
    settings[KEY_POLLING_COUNT] = str(config.polling_connection_count)
    settings[KEY_TRUSTED_SERVERS] = encode_trusted_servers(config.trusted_servers)
    if config.certificate_pem is not None:
        if config.private_key_pem is None:
            raise ConfigError("A certificate cannot be saved without its private key.")
        settings[KEY_CERTIFICATE] = encode_certificate_setting(config.certificate_pem,
                                                               config.private_key_pem)
        settings[KEY_THUMBPRINT] = thumbprint_of_pem(config.certificate_pem)
    else:
        if KEY_CERTIFICATE in config.extra:
            settings[KEY_CERTIFICATE] = config.extra[KEY_CERTIFICATE]
        if config.thumbprint:
            settings[KEY_THUMBPRINT] = config.thumbprint
    return settings


# ------------------------------------------------------------------ files

def infer_instance_name(config_path: Path) -> str:
    """The instance a configuration file belongs to: the registry's answer, else the name in
    `tentacle-<name>.config`, else the default instance name."""
    try:
        record = InstanceRegistry().find_by_config_path(config_path)
    except TentacleError:
        record = None
    if record is not None:
        return record.name
    match = re.fullmatch(r"tentacle-(.+)\.config", config_path.name, re.IGNORECASE)
    return match.group(1) if match else DEFAULT_INSTANCE


def read_settings_file(path: Path) -> dict[str, str]:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"Configuration file {path} could not be found.") from None
    except OSError as exc:
        raise ConfigError(f"Unable to read the configuration file {path}: "
                          f"{exc.strerror}.") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"The configuration file {path} is larger than "
                          f"{MAX_CONFIG_BYTES // (1024 * 1024)} MiB.")
    try:
        return parse_settings_xml(data)
    except ValueError as exc:
        raise ConfigError(f"The configuration file {path} cannot be read: {exc}") from None


def load_config(path: Path, *, instance: str | None = None,
                tolerate_bad_certificate: bool = False) -> TentacleConfig:
    """Load an instance's configuration. `instance` defaults to what `infer_instance_name` finds.

    With `tolerate_bad_certificate`, a certificate that cannot be decoded leaves
    `certificate_pem` None (its text stays in `extra`) instead of failing, so that
    `new-certificate` can replace it.
    """
    path = Path(os.path.abspath(path))
    settings = read_settings_file(path)
    name = instance if instance is not None else infer_instance_name(path)
    return config_from_settings(settings, path, name,
                                tolerate_bad_certificate=tolerate_bad_certificate)


def save_config(config: TentacleConfig) -> None:
    """Write the configuration atomically with mode 0600; the directory is created (0700)."""
    try:
        data = render_settings_xml(settings_from_config(config))
    except ValueError as exc:
        raise ConfigError(f"The configuration cannot be saved: {exc}.") from None
    path = config.config_path
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=DIRECTORY_MODE)
        write_atomic(path, data, mode=CONFIG_MODE)
    except OSError as exc:
        raise ConfigError(f"Unable to write the configuration file {path}: "
                          f"{exc.strerror}.") from None


def new_config(instance: str, config_path: Path, home: Path) -> TentacleConfig:
    """An empty configuration for a new instance (no certificate, no trusted servers)."""
    return TentacleConfig(instance=instance, config_path=config_path, home=home,
                          app_dir=default_app_dir(home), certificate_pem=None,
                          private_key_pem=None, thumbprint=None, trusted_servers=(),
                          polling_connection_count=DEFAULT_POLLING_CONNECTION_COUNT,
                          no_listen=False, listen_port=DEFAULT_PORT, extra={})


@contextmanager
def config_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on the configuration's directory for a read-modify-write."""
    directory = path.parent
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"Unable to open the configuration directory {directory}: "
                          f"{exc.strerror}.") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def update_config(path: Path, change: Callable[[TentacleConfig], TentacleConfig], *,
                  instance: str | None = None,
                  tolerate_bad_certificate: bool = False) -> TentacleConfig:
    """Load, apply `change`, save, all under `config_lock`; returns what was saved."""
    with config_lock(Path(os.path.abspath(path))):
        current = load_config(path, instance=instance,
                              tolerate_bad_certificate=tolerate_bad_certificate)
        updated = change(current)
        if updated != current:
            save_config(updated)
        return updated


def resolve_config(instance: str | None, config: str | None) -> Path:
    """The configuration file for `--instance` / `--config` (`--config` wins when both are
    given). No instance means the default instance (`Tentacle`, else the only one)."""
    if config:
        return Path(os.path.abspath(os.path.expanduser(config)))
    return InstanceRegistry().require(instance).config_path


def _same_address(left: str | None, right: str | None) -> bool:
    if left is None or right is None:
        return left is right
    return left.rstrip("/").lower() == right.rstrip("/").lower()


def add_or_update_trusted_server(servers: tuple[TrustedServer, ...],
                                 server: TrustedServer) -> tuple[TrustedServer, ...]:
    """Replace the entry with the same thumbprint and address (both ignoring case, the address
    also ignoring a trailing slash), else append: the real Tentacle's AddOrUpdate."""
    kept = tuple(s for s in servers
                 if not (s.thumbprint.lower() == server.thumbprint.lower()
                         and _same_address(s.address, server.address)))
    return (*kept, server)


def remove_trusted_thumbprint(servers: tuple[TrustedServer, ...],
                              thumbprint: str) -> tuple[TrustedServer, ...]:
    """Every entry except those trusting `thumbprint` (ignoring case)."""
    return tuple(s for s in servers if s.thumbprint.lower() != thumbprint.lower())
