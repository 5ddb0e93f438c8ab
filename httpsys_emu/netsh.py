"""The `netsh http` grammar and output, as pure functions: key=value tokens in, netsh's text out.

Parsing follows netsh: keys (tags) are case-insensitive, values are kept as given, a token without
`=` fills the next parameter in the command's order (netsh's optional tags), a repeated or
unknown key or a missing required one is error 87 (`The parameter is incorrect.`).
Enumerated values (`yes|no`, `enable|disable`, timeout types) are case-insensitive.

Output choices where no Windows capture was at hand:
- No leading blank line before a `show` header; each entry is followed by a blank line.
- Success and failure messages are one line each; failures are netsh's two lines
  (`<action> failed, Error: N` then the system message).
- `show timeout` header `Service Timeout Values:`; `add|delete timeout` answer
  `Timeout successfully added|deleted`; `iplisten` failures `IP address add|delete failed`.
- Our extensions `forward` and `setting` use the same shapes (`Forward successfully added`,
  `URL Forwards:`, `HTTP Settings:`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from httpsys_emu.certstore import normalize_thumbprint
from httpsys_emu.store import (NETSH_TIMEOUT_TYPES, SETTINGS, Forward, SslCertBinding, SslKey,
                               SslKind, Timeouts, UrlAclEntry, normalize_ip_address)
from httpsys_emu.urlacl import UrlAcl
from httpsys_emu.urlprefix import UrlPrefix, parse_prefix
from httpsys_emu.winerror import ERROR_INVALID_PARAMETER, MESSAGES, WinError



def system_message(code: int) -> str:
    """The Windows system message for `code`, as netsh prints it under a failure line."""
    return MESSAGES.get(code) or f"Unknown error {code}."


def _bad(detail: str) -> WinError:
    return WinError(ERROR_INVALID_PARAMETER, detail)


# ----------------------------------------------------------------------------- grammar

@dataclass(frozen=True)
class Grammar:
    """The parameters of one netsh command, in netsh's order, and which are required.

    `one_of` groups need exactly one member present; `at_most_one` groups at most one.
    """

    params: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    one_of: tuple[tuple[str, ...], ...] = ()
    at_most_one: tuple[tuple[str, ...], ...] = ()


def parse_key_values(tokens: Sequence[str], grammar: Grammar) -> dict[str, str]:
    """Map parameter name (lower case) → value; WinError 87 for anything netsh would refuse."""
    values: dict[str, str] = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if sep:
            name = key.lower()
            if name not in grammar.params:
                raise _bad(f"unknown parameter {key!r}")
        else:
            free = [p for p in grammar.params if p not in values]
            if not free:
                raise _bad(f"unexpected value {token!r}")
            name, value = free[0], token
        if name in values:
            raise _bad(f"parameter {name!r} given twice")
        values[name] = value
    for name in grammar.required:
        if name not in values:
            raise _bad(f"missing parameter {name!r}")
    for group in grammar.one_of:
        present = [p for p in group if p in values]
        if len(present) != 1:
            raise _bad(f"exactly one of {', '.join(group)} is needed")
    for group in grammar.at_most_one:
        if len([p for p in group if p in values]) > 1:
            raise _bad(f"at most one of {', '.join(group)} may be given")
    return values


@dataclass(frozen=True)
class CommandSpec:
    """One `verb noun` command: its grammar and the usage lines shown by --help."""

    grammar: Grammar
    usage: str
    example: str


_SSL_KEYS = ("ipport", "hostnameport", "ccs")
_SSL_OPTIONS = ("certhash", "appid", "certstorename", "verifyclientcertrevocation",
                "verifyrevocationwithcachedclientcertonly", "usagecheck",
                "revocationfreshnesstime", "urlretrievaltimeout", "sslctlidentifier",
                "sslctlstorename", "dsmapperusage", "clientcertnegotiation")
EXAMPLE_CERTHASH = "9975b2fb620b857821ae5054cc43efdadd75bcc2"
EXAMPLE_APPID = "{00112233-4455-6677-8899-aabbccddeeff}"

COMMANDS: dict[tuple[str, str], CommandSpec] = {
    ("add", "sslcert"): CommandSpec(
        Grammar(_SSL_KEYS + _SSL_OPTIONS, required=("appid",), one_of=(_SSL_KEYS,)),
        "add sslcert ipport=IP:PORT | hostnameport=NAME:PORT | ccs=PORT\n"
        "    certhash=THUMBPRINT appid={GUID} [certstorename=MY]\n"
        "    [verifyclientcertrevocation=enable|disable]\n"
        "    [verifyrevocationwithcachedclientcertonly=enable|disable]\n"
        "    [usagecheck=enable|disable] [revocationfreshnesstime=SECS]\n"
        "    [urlretrievaltimeout=MSECS] [sslctlidentifier=ID] [sslctlstorename=NAME]\n"
        "    [dsmapperusage=enable|disable] [clientcertnegotiation=enable|disable]",
        f"add sslcert ipport=0.0.0.0:443 certhash={EXAMPLE_CERTHASH} appid={EXAMPLE_APPID}"),
    ("delete", "sslcert"): CommandSpec(
        Grammar(_SSL_KEYS, one_of=(_SSL_KEYS,)),
        "delete sslcert ipport=IP:PORT | hostnameport=NAME:PORT | ccs=PORT",
        "delete sslcert ipport=[::]:443"),
    ("show", "sslcert"): CommandSpec(
        Grammar(_SSL_KEYS, at_most_one=(_SSL_KEYS,)),
        "show sslcert [ipport=IP:PORT | hostnameport=NAME:PORT | ccs=PORT]",
        "show sslcert hostnameport=www.contoso.com:443"),
    ("add", "urlacl"): CommandSpec(
        Grammar(("url", "user", "listen", "delegate", "sddl"), required=("url",),
                one_of=(("user", "sddl"),), at_most_one=(("sddl", "listen"), ("sddl", "delegate"))),
        "add urlacl url=PREFIX user=NAME [listen=yes|no] [delegate=yes|no]\n"
        "add urlacl url=PREFIX sddl=SDDL",
        "add urlacl url=https://+:443/OctopusComms/ user=octopus listen=yes"),
    ("delete", "urlacl"): CommandSpec(
        Grammar(("url",), required=("url",)),
        "delete urlacl url=PREFIX", "delete urlacl url=https://+:443/OctopusComms/"),
    ("show", "urlacl"): CommandSpec(
        Grammar(("url",)), "show urlacl [url=PREFIX]",
        "show urlacl url=https://+:443/OctopusComms/"),
    ("add", "iplisten"): CommandSpec(
        Grammar(("ipaddress",), required=("ipaddress",)),
        "add iplisten ipaddress=IPADDRESS", "add iplisten ipaddress=10.0.0.1"),
    ("delete", "iplisten"): CommandSpec(
        Grammar(("ipaddress",), required=("ipaddress",)),
        "delete iplisten ipaddress=IPADDRESS", "delete iplisten ipaddress=::1"),
    ("show", "iplisten"): CommandSpec(Grammar(), "show iplisten", "show iplisten"),
    ("show", "servicestate"): CommandSpec(Grammar(), "show servicestate", "show servicestate"),
    ("show", "metrics"): CommandSpec(Grammar(), "show metrics", "show metrics"),
    ("add", "timeout"): CommandSpec(
        Grammar(("timeouttype", "value"), required=("timeouttype", "value")),
        "add timeout timeouttype=idleconnectiontimeout|headerwaittimeout value=SECS",
        "add timeout timeouttype=idleconnectiontimeout value=240"),
    ("delete", "timeout"): CommandSpec(
        Grammar(("timeouttype",), required=("timeouttype",)),
        "delete timeout timeouttype=idleconnectiontimeout|headerwaittimeout",
        "delete timeout timeouttype=headerwaittimeout"),
    ("show", "timeout"): CommandSpec(Grammar(), "show timeout", "show timeout"),
    ("add", "forward"): CommandSpec(
        Grammar(("url", "target"), required=("url", "target")),
        "add forward url=PREFIX target=http://HOST:PORT|unix:/PATH",
        "add forward url=https://+:8443/ target=http://127.0.0.1:8080"),
    ("delete", "forward"): CommandSpec(
        Grammar(("url",), required=("url",)),
        "delete forward url=PREFIX", "delete forward url=https://+:8443/"),
    ("show", "forward"): CommandSpec(
        Grammar(("url",)), "show forward [url=PREFIX]", "show forward"),
    ("add", "setting"): CommandSpec(
        Grammar(("setting", "value"), required=("setting", "value")),
        "add setting setting=NAME value=N\n    NAME: " + ", ".join(list(SETTINGS)[:6]) + ",\n    "
        + ", ".join(list(SETTINGS)[6:]),
        "add setting setting=maxfieldlength value=32768"),
    ("delete", "setting"): CommandSpec(
        Grammar(("setting",), required=("setting",)),
        "delete setting setting=NAME", "delete setting setting=maxfieldlength"),
    ("show", "setting"): CommandSpec(Grammar(), "show setting", "show setting"),
}
NOUNS = ("sslcert", "urlacl", "iplisten", "timeout", "forward", "setting")
VERBS = ("add", "delete", "show")


# ----------------------------------------------------------------------------- values

def parse_yes_no(value: str) -> bool:
    lowered = value.lower()
    if lowered not in ("yes", "no"):
        raise _bad(f"{value!r} is not yes or no")
    return lowered == "yes"


def parse_enable_disable(value: str) -> bool:
    lowered = value.lower()
    if lowered not in ("enable", "disable"):
        raise _bad(f"{value!r} is not enable or disable")
    return lowered == "enable"


def parse_uint(value: str, maximum: int = 2**32 - 1) -> int:
    if not (value.isascii() and value.isdigit()) or int(value) > maximum:
        raise _bad(f"{value!r} is not a number in 0..{maximum}")
    return int(value)


def _split_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()):
        raise _bad(f"{value!r} is not HOST:PORT")
    number = int(port)
    if not 1 <= number <= 65535:
        raise _bad(f"port {port} out of range")
    return host, number


def parse_ipport(value: str) -> SslKey:
    """`0.0.0.0:443` or `[::]:443`; IPv6 needs the brackets."""
    host, port = _split_port(value)
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise _bad(f"IPv6 address in {value!r} needs brackets")
    return SslKey.ipport(host, port)


def parse_hostnameport(value: str) -> SslKey:
    host, port = _split_port(value)
    return SslKey.hostnameport(host, port)


def parse_ccs(value: str) -> SslKey:
    return SslKey.ccs(parse_uint(value, 65535))


_GUID_RE = re.compile(r"\{[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-"
                      r"[0-9A-Fa-f]{12}\}")


def parse_appid(value: str) -> str:
    """`{GUID}` (braces required, as netsh wants them), returned in lower case."""
    if not _GUID_RE.fullmatch(value):
        raise _bad(f"appid {value!r} is not a {{GUID}}")
    return value.lower()


def sslcert_key_from_args(values: Mapping[str, str]) -> SslKey | None:
    """The binding key named by ipport= / hostnameport= / ccs=, if any."""
    if "ipport" in values:
        return parse_ipport(values["ipport"])
    if "hostnameport" in values:
        return parse_hostnameport(values["hostnameport"])
    if "ccs" in values:
        return parse_ccs(values["ccs"])
    return None


def _optional_text(value: str | None) -> str | None:
    return value if value else None


def sslcert_binding_from_args(values: Mapping[str, str]) -> SslCertBinding:
    """An `add sslcert` binding from parsed arguments; 87 for any malformed value."""
    key = sslcert_key_from_args(values)
    if key is None:
        raise _bad("ipport, hostnameport or ccs is required")
    certhash = values.get("certhash")
    if certhash is None and key.kind is not SslKind.CCS:
        raise _bad("certhash is required")

    def flag(name: str, default: bool) -> bool:
        return parse_enable_disable(values[name]) if name in values else default

    def number(name: str) -> int:
        return parse_uint(values[name]) if name in values else 0

    store_name = values.get("certstorename")
    if store_name is not None and not store_name:
        raise _bad("empty certstorename")
    return SslCertBinding(
        key=key,
        certhash=normalize_thumbprint(certhash) if certhash is not None else None,
        appid=parse_appid(values["appid"]),
        certstorename=store_name,
        verify_client_cert_revocation=flag("verifyclientcertrevocation", True),
        verify_revocation_with_cached_client_cert_only=flag(
            "verifyrevocationwithcachedclientcertonly", False),
        usage_check=flag("usagecheck", True),
        revocation_freshness_time=number("revocationfreshnesstime"),
        url_retrieval_timeout=number("urlretrievaltimeout"),
        sslctl_identifier=_optional_text(values.get("sslctlidentifier")),
        sslctl_storename=_optional_text(values.get("sslctlstorename")),
        ds_mapper_usage=flag("dsmapperusage", False),
        client_cert_negotiation=flag("clientcertnegotiation", False),
    )


def urlacl_from_args(values: Mapping[str, str],
                     resolve_user: Callable[[str], str]) -> UrlAcl:
    """The DACL of an `add urlacl` (from sddl=, or user= listen= delegate=).

    `resolve_user` maps a user name to a SID and raises WinError 1332 for unknown accounts.
    87 when neither right would be granted or the SDDL is outside the supported subset.
    """
    if "sddl" in values:
        return UrlAcl.from_sddl(values["sddl"])
    listen = parse_yes_no(values["listen"]) if "listen" in values else True
    delegate = parse_yes_no(values["delegate"]) if "delegate" in values else False
    if not (listen or delegate):
        raise _bad("listen=no delegate=no grants nothing")
    if not values["user"]:
        raise _bad("empty user")
    return UrlAcl.for_user(resolve_user(values["user"]), listen, delegate)


def parse_url(value: str) -> UrlPrefix:
    """A url= value (WinError 87 with a detail when invalid)."""
    return parse_prefix(value)


def parse_timeout_type(value: str) -> str:
    lowered = value.lower()
    if lowered not in NETSH_TIMEOUT_TYPES:
        raise _bad(f"timeouttype {value!r} is not idleconnectiontimeout or headerwaittimeout")
    return lowered


def parse_setting_name(value: str) -> str:
    lowered = value.lower()
    if lowered not in SETTINGS:
        raise _bad(f"unknown setting {value!r}")
    return lowered


def parse_ip_address(value: str) -> str:
    return normalize_ip_address(value)


# ----------------------------------------------------------------------------- output

def failure(action: str, code: int) -> str:
    """netsh's two-line failure: `SSL Certificate add failed, Error: 183` + system message."""
    return f"{action}, Error: {code}\n{system_message(code)}\n"


def parameter_incorrect() -> str:
    return f"{system_message(ERROR_INVALID_PARAMETER)}\n"


def _header(title: str) -> list[str]:
    return [title, "-" * len(title), ""]


def _enabled(flag: bool) -> str:
    return "Enabled" if flag else "Disabled"


def _null(value: str | None) -> str:
    return value if value else "(null)"


_KEY_ROW = {SslKind.IPPORT: "IP:port", SslKind.HOSTNAMEPORT: "Hostname:port",
            SslKind.CCS: "Central Certificate Store"}
SSLCERT_HEADER = "SSL Certificate bindings:"


def sslcert_rows(binding: SslCertBinding) -> list[tuple[str, str]]:
    """The (name, value) rows of one binding, in netsh's order and wording."""
    b = binding
    return [
        (_KEY_ROW[b.key.kind], str(b.key)),
        ("Certificate Hash", b.certhash.lower() if b.certhash else "(null)"),
        ("Application ID", b.appid),
        ("Certificate Store Name", _null(b.certstorename)),
        ("Verify Client Certificate Revocation", _enabled(b.verify_client_cert_revocation)),
        ("Verify Revocation Using Cached Client Certificate Only",
         _enabled(b.verify_revocation_with_cached_client_cert_only)),
        ("Usage Check", _enabled(b.usage_check)),
        ("Revocation Freshness Time", str(b.revocation_freshness_time)),
        ("URL Retrieval Timeout", str(b.url_retrieval_timeout)),
        ("Ctl Identifier", _null(b.sslctl_identifier)),
        ("Ctl Store Name", _null(b.sslctl_storename)),
        ("DS Mapper Usage", _enabled(b.ds_mapper_usage)),
        ("Negotiate Client Certificate", _enabled(b.client_cert_negotiation)),
    ]


def format_sslcerts(bindings: Iterable[SslCertBinding]) -> str:
    """`show sslcert`: header, dashes, blank, then each binding's rows and a blank line."""
    lines = _header(SSLCERT_HEADER)
    for binding in bindings:
        lines += [f"    {name:<28} : {value}" for name, value in sslcert_rows(binding)]
        lines.append("")
    return "\n".join(lines) + "\n"


def format_sslcert_not_found() -> str:
    """`show sslcert KEY` for a key with no binding."""
    return "\n".join(_header(SSLCERT_HEADER)) + f"\n{system_message(2)}\n"


def _yes_no(flag: bool) -> str:
    return "Yes" if flag else "No"


def format_urlacls(entries: Iterable[UrlAclEntry],
                   display_user: Callable[..., str] | None = None) -> str:
    """`show urlacl`: one block per reservation, one User block per ACE, SDDL at the end."""
    lines = _header("URL Reservations:")
    for entry in entries:
        lines.append(f"    {'Reserved URL':<23} : {entry.prefix}")
        for ace in entry.acl.aces:
            user = display_user(ace) if display_user else ace.display_user()
            lines += [f"        User: {user}",
                      f"            Listen: {_yes_no(ace.listen)}",
                      f"            Delegate: {_yes_no(ace.delegate)}"]
        lines.append(f"            SDDL: {entry.acl.to_sddl()}")
        lines.append("")
    return "\n".join(lines) + "\n"


def format_iplisten(addresses: Iterable[str]) -> str:
    lines = _header("IP addresses present in the IP listen list:")
    lines += [f"    {address}" for address in addresses]
    if lines[-1] != "":
        lines.append("")
    return "\n".join(lines) + "\n"


TIMEOUT_ROWS = (("Idle Connection Timeout (secs)", "idle_connection"),
                ("Header Wait Timeout (secs)", "header_wait"))


def format_timeouts(timeouts: Timeouts) -> str:
    lines = _header("Service Timeout Values:")
    lines += [f"    {name:<30} : {getattr(timeouts, attr)}" for name, attr in TIMEOUT_ROWS]
    lines.append("")
    return "\n".join(lines) + "\n"


def format_forwards(forwards: Iterable[Forward]) -> str:
    lines = _header("URL Forwards:")
    for forward in forwards:
        lines += [f"    {'Forwarded URL':<23} : {forward.prefix}",
                  f"        Target: {forward.target}", ""]
    return "\n".join(lines) + "\n"


def format_settings(stored: Mapping[str, int]) -> str:
    lines = _header("HTTP Settings:")
    for name, spec in SETTINGS.items():
        if name in stored:
            lines.append(f"    {name:<28} : {stored[name]} ({spec.unit})")
        else:
            lines.append(f"    {name:<28} : {spec.default} ({spec.unit}, default)")
    lines.append("")
    return "\n".join(lines) + "\n"


def usage_text(noun: str | None = None, verb: str | None = None) -> str:
    """Usage lines and examples for --help, optionally limited to one noun or one verb."""
    blocks: list[str] = []
    for (v, n), spec in COMMANDS.items():
        if (noun is None or n == noun) and (verb is None or v == verb):
            blocks.append(spec.usage + "\n  Example: httpsys-emu " + spec.example)
    return "\n\n".join(blocks)
