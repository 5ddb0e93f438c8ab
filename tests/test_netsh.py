"""The netsh grammar (key=value parsing, value parsers) and netsh's exact output layouts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from httpsys_emu.netsh import (COMMANDS, Grammar, failure, format_forwards, format_iplisten,
                               format_sslcert_not_found, format_sslcerts, format_timeouts,
                               format_urlacls, parse_appid, parse_enable_disable, parse_ipport,
                               parse_key_values, parse_uint, parse_yes_no,
                               sslcert_binding_from_args, urlacl_from_args)
from httpsys_emu.store import (Forward, ForwardTarget, SslCertBinding, SslKey, SslKind,
                               Timeouts, UrlAclEntry)
from httpsys_emu.urlacl import Ace, UrlAcl
from httpsys_emu.urlprefix import parse_prefix
from httpsys_emu.winerror import WinError

GRAMMAR = Grammar(("url", "user", "listen", "delegate", "sddl"), required=("url",),
                  one_of=(("user", "sddl"),))
THUMB = "C38BA62A08DB13FBEC05A004AA2AA85686BA650E"
APPID = "{00112233-4455-6677-8899-aabbccddeeff}"


def _code(exc_info: pytest.ExceptionInfo[WinError]) -> int:
    return exc_info.value.code


# --------------------------------------------------------------------------- key=value


def test_keys_are_case_insensitive_values_kept() -> None:
    values = parse_key_values(["URL=https://+:443/Foo", "User=Octopus"], GRAMMAR)
    assert values == {"url": "https://+:443/Foo", "user": "Octopus"}


def test_value_may_contain_equals() -> None:
    assert parse_key_values(["url=a", "sddl=x=y"], GRAMMAR)["sddl"] == "x=y"


def test_tagless_values_fill_parameters_in_order() -> None:
    assert parse_key_values(["http://+:80/", "octopus"], GRAMMAR) == {
        "url": "http://+:80/", "user": "octopus"}
    assert parse_key_values(["user=octopus", "http://+:80/"], GRAMMAR) == {
        "url": "http://+:80/", "user": "octopus"}


@pytest.mark.parametrize("tokens", [
    ["url=a", "user=b", "bogus=c"],          # unknown key
    ["url=a"],                               # neither user nor sddl
    ["user=b"],                              # url missing
    ["url=a", "user=b", "URL=c"],            # repeated (case-insensitively)
    ["url=a", "user=b", "sddl=c"],           # both of a one-of group
    ["a", "b", "c", "d", "e", "f"],          # more tagless values than parameters
    ["=x", "url=a", "user=b"],               # empty key
])
def test_grammar_violations_are_error_87(tokens: list[str]) -> None:
    with pytest.raises(WinError) as info:
        parse_key_values(tokens, GRAMMAR)
    assert _code(info) == 87


_names = st.sampled_from(GRAMMAR.params)
_values = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)


@given(st.dictionaries(_names, _values, min_size=1), st.randoms(use_true_random=False),
       st.data())
def test_parse_recovers_any_key_value_set(values: dict[str, str], random: object,
                                          data: st.DataObject) -> None:
    tokens = []
    for name, value in values.items():
        key = "".join(data.draw(st.sampled_from([c.lower(), c.upper()])) for c in name)
        tokens.append(f"{key}={value}")
    random.shuffle(tokens)  # type: ignore[attr-defined]
    grammar = Grammar(GRAMMAR.params)
    assert parse_key_values(tokens, grammar) == values


@given(st.lists(st.text(max_size=15), max_size=8))
def test_parse_fails_only_with_error_87(tokens: list[str]) -> None:
    for grammar in (GRAMMAR, *(spec.grammar for spec in COMMANDS.values())):
        try:
            values = parse_key_values(tokens, grammar)
        except WinError as exc:
            assert exc.code == 87
        else:
            assert set(values) <= set(grammar.params)


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("text, kind, host, port, shown", [
    ("0.0.0.0:443", SslKind.IPPORT, "0.0.0.0", 443, "0.0.0.0:443"),
    ("[::]:443", SslKind.IPPORT, "::", 443, "[::]:443"),
    ("[0:0::1]:8443", SslKind.IPPORT, "::1", 8443, "[::1]:8443"),
    ("[::ffff:10.0.0.1]:443", SslKind.IPPORT, "10.0.0.1", 443, "10.0.0.1:443"),
    ("10.1.2.3:65535", SslKind.IPPORT, "10.1.2.3", 65535, "10.1.2.3:65535"),
])
def test_parse_ipport(text: str, kind: SslKind, host: str, port: int, shown: str) -> None:
    key = parse_ipport(text)
    assert (key.kind, key.host, key.port, str(key)) == (kind, host, port, shown)


@pytest.mark.parametrize("text", ["0.0.0.0", "0.0.0.0:", "0.0.0.0:0", "0.0.0.0:65536",
                                  ":::443", "::1:443", "localhost:443", "1.2.3:443",
                                  "0.0.0.0:+443", "[::]443", "0.0.0.0:44 3"])
def test_bad_ipport_is_87(text: str) -> None:
    with pytest.raises(WinError) as info:
        parse_ipport(text)
    assert _code(info) == 87


def test_simple_value_parsers() -> None:
    assert parse_yes_no("YES") is True and parse_yes_no("no") is False
    assert parse_enable_disable("Enable") is True and parse_enable_disable("disable") is False
    assert parse_uint("0") == 0 and parse_uint("4294967295") == 2**32 - 1
    assert parse_appid("{00112233-4455-6677-8899-AABBCCDDEEFF}") == APPID
    for bad in (lambda: parse_yes_no("y"), lambda: parse_enable_disable("on"),
                lambda: parse_uint("-1"), lambda: parse_uint("4294967296"),
                lambda: parse_uint("١"), lambda: parse_appid(APPID[1:-1]),
                lambda: parse_appid("{0011}")):
        with pytest.raises(WinError):
            bad()


def test_sslcert_binding_defaults_match_netsh() -> None:
    binding = sslcert_binding_from_args({"ipport": "0.0.0.0:443", "certhash": THUMB.lower(),
                                         "appid": APPID.upper()})
    assert binding == SslCertBinding(SslKey.ipport("0.0.0.0", 443), THUMB, APPID)
    assert binding.verify_client_cert_revocation and binding.usage_check
    assert not binding.client_cert_negotiation and binding.store_name == "MY"


def test_sslcert_binding_every_option() -> None:
    binding = sslcert_binding_from_args({
        "hostnameport": "WWW.Example.com:443", "certhash": "c3 8b " + THUMB[4:],
        "appid": APPID, "certstorename": "Root", "verifyclientcertrevocation": "disable",
        "verifyrevocationwithcachedclientcertonly": "enable", "usagecheck": "disable",
        "revocationfreshnesstime": "3600", "urlretrievaltimeout": "15000",
        "sslctlidentifier": "MyCtl", "sslctlstorename": "CtlStore",
        "dsmapperusage": "enable", "clientcertnegotiation": "ENABLE"})
    assert binding.key == SslKey(SslKind.HOSTNAMEPORT, "www.example.com", 443)
    assert binding.certhash == THUMB and binding.store_name == "ROOT"
    assert binding.certstorename == "Root"
    assert not binding.verify_client_cert_revocation
    assert binding.verify_revocation_with_cached_client_cert_only
    assert not binding.usage_check and binding.revocation_freshness_time == 3600
    assert binding.url_retrieval_timeout == 15000
    assert (binding.sslctl_identifier, binding.sslctl_storename) == ("MyCtl", "CtlStore")
    assert binding.ds_mapper_usage and binding.client_cert_negotiation


@pytest.mark.parametrize("values", [
    {"ipport": "0.0.0.0:443", "appid": APPID},                                  # no certhash
    {"ipport": "0.0.0.0:443", "certhash": "abc", "appid": APPID},
    {"ipport": "0.0.0.0:443", "certhash": THUMB, "appid": "nope"},
    {"ipport": "0.0.0.0:443", "certhash": THUMB, "appid": APPID, "usagecheck": "yes"},
    {"hostnameport": "10.0.0.1:443", "certhash": THUMB, "appid": APPID},
    {"hostnameport": "*:443", "certhash": THUMB, "appid": APPID},
    {"ccs": "0", "appid": APPID},
])
def test_bad_sslcert_values_are_87(values: dict[str, str]) -> None:
    with pytest.raises(WinError) as info:
        sslcert_binding_from_args(values)
    assert _code(info) == 87


def test_ccs_binding_needs_no_certhash() -> None:
    binding = sslcert_binding_from_args({"ccs": "443", "appid": APPID})
    assert binding.key == SslKey.ccs(443) and binding.certhash is None


def test_urlacl_from_args() -> None:
    def resolve(name: str) -> str:
        return {"octopus": "S-1-22-1-1000"}[name]
    acl = urlacl_from_args({"url": "x", "user": "octopus", "delegate": "YES"}, resolve)
    assert acl.to_sddl() == "D:(A;;GA;;;S-1-22-1-1000)"
    acl = urlacl_from_args({"url": "x", "sddl": "D:(A;;GX;;;WD)"}, resolve)
    assert acl.to_sddl() == "D:(A;;GX;;;WD)"
    with pytest.raises(WinError):
        urlacl_from_args({"url": "x", "user": "octopus", "listen": "no"}, resolve)


# --------------------------------------------------------------------------- output

SSLCERT_SHOW = """\
SSL Certificate bindings:
-------------------------

    IP:port                      : 0.0.0.0:443
    Certificate Hash             : c38ba62a08db13fbec05a004aa2aa85686ba650e
    Application ID               : {00112233-4455-6677-8899-aabbccddeeff}
    Certificate Store Name       : (null)
    Verify Client Certificate Revocation : Enabled
    Verify Revocation Using Cached Client Certificate Only : Disabled
    Usage Check                  : Enabled
    Revocation Freshness Time    : 0
    URL Retrieval Timeout        : 0
    Ctl Identifier               : (null)
    Ctl Store Name               : (null)
    DS Mapper Usage              : Disabled
    Negotiate Client Certificate : Disabled

    Hostname:port                : www.contoso.com:443
    Certificate Hash             : c38ba62a08db13fbec05a004aa2aa85686ba650e
    Application ID               : {00112233-4455-6677-8899-aabbccddeeff}
    Certificate Store Name       : My
    Verify Client Certificate Revocation : Disabled
    Verify Revocation Using Cached Client Certificate Only : Enabled
    Usage Check                  : Disabled
    Revocation Freshness Time    : 60
    URL Retrieval Timeout        : 5000
    Ctl Identifier               : ctl
    Ctl Store Name               : CtlStore
    DS Mapper Usage              : Enabled
    Negotiate Client Certificate : Enabled

    Central Certificate Store    : 8443
    Certificate Hash             : (null)
    Application ID               : {00112233-4455-6677-8899-aabbccddeeff}
    Certificate Store Name       : (null)
    Verify Client Certificate Revocation : Enabled
    Verify Revocation Using Cached Client Certificate Only : Disabled
    Usage Check                  : Enabled
    Revocation Freshness Time    : 0
    URL Retrieval Timeout        : 0
    Ctl Identifier               : (null)
    Ctl Store Name               : (null)
    DS Mapper Usage              : Disabled
    Negotiate Client Certificate : Disabled

"""


def test_show_sslcert_layout() -> None:
    bindings = [
        SslCertBinding(SslKey.ipport("0.0.0.0", 443), THUMB, APPID),
        SslCertBinding(SslKey.hostnameport("www.contoso.com", 443), THUMB, APPID, "My",
                       False, True, False, 60, 5000, "ctl", "CtlStore", True, True),
        SslCertBinding(SslKey.ccs(8443), None, APPID),
    ]
    assert format_sslcerts(bindings) == SSLCERT_SHOW


def test_show_sslcert_empty_and_missing() -> None:
    assert format_sslcerts([]) == "SSL Certificate bindings:\n-------------------------\n\n"
    assert format_sslcert_not_found() == (
        "SSL Certificate bindings:\n-------------------------\n\n"
        "The system cannot find the file specified.\n")


def test_show_urlacl_layout() -> None:
    entries = [
        UrlAclEntry(parse_prefix("https://+:443/OctopusComms"),
                    UrlAcl((Ace("S-1-22-1-0"),))),
        UrlAclEntry(parse_prefix("http://+:80/Temporary_Listen_Addresses/"),
                    UrlAcl((Ace("S-1-1-0"), Ace("S-1-22-1-0", True, True)))),
    ]
    assert format_urlacls(entries) == """\
URL Reservations:
-----------------

    Reserved URL            : https://+:443/OctopusComms/
        User: \\root
            Listen: Yes
            Delegate: No
            SDDL: D:(A;;GX;;;S-1-22-1-0)

    Reserved URL            : http://+:80/Temporary_Listen_Addresses/
        User: \\Everyone
            Listen: Yes
            Delegate: No
        User: \\root
            Listen: Yes
            Delegate: Yes
            SDDL: D:(A;;GX;;;WD)(A;;GA;;;S-1-22-1-0)

"""


def test_show_iplisten_layout() -> None:
    assert format_iplisten(["192.168.33.1", "::1"]) == """\
IP addresses present in the IP listen list:
-------------------------------------------

    192.168.33.1
    ::1

"""
    assert format_iplisten([]) == ("IP addresses present in the IP listen list:\n"
                                   "-------------------------------------------\n\n")


def test_show_timeout_layout() -> None:
    assert format_timeouts(Timeouts(idle_connection=240)) == """\
Service Timeout Values:
-----------------------

    Idle Connection Timeout (secs) : 240
    Header Wait Timeout (secs)     : 120

"""


def test_show_forward_layout() -> None:
    forwards = [Forward(parse_prefix("https://+:8443/"),
                        ForwardTarget.parse("http://127.0.0.1:8080")),
                Forward(parse_prefix("https://+:8443/api"), ForwardTarget.parse("unix:/run/a"))]
    assert format_forwards(forwards) == """\
URL Forwards:
-------------

    Forwarded URL           : https://+:8443/
        Target: http://127.0.0.1:8080

    Forwarded URL           : https://+:8443/api/
        Target: unix:/run/a

"""


@pytest.mark.parametrize("action, code, text", [
    ("SSL Certificate add failed", 183,
     "SSL Certificate add failed, Error: 183\n"
     "Cannot create a file when that file already exists.\n"),
    ("SSL Certificate deletion failed", 2,
     "SSL Certificate deletion failed, Error: 2\nThe system cannot find the file specified.\n"),
    ("SSL Certificate add failed", 1312,
     "SSL Certificate add failed, Error: 1312\n"
     "A specified logon session does not exist. It may already have been terminated.\n"),
    ("Create SDDL failed", 1332,
     "Create SDDL failed, Error: 1332\n"
     "No mapping between account names and security IDs was done.\n"),
])
def test_failure_text(action: str, code: int, text: str) -> None:
    assert failure(action, code) == text


def test_every_command_has_usage_and_an_example() -> None:
    for (verb, noun), spec in COMMANDS.items():
        assert spec.usage.startswith(f"{verb} {noun}")
        assert spec.example.startswith(f"{verb} {noun}")
        # the example itself parses
        tokens = spec.example.split()[2:]
        parse_key_values(tokens, spec.grammar)
