"""URL reservation ACLs: the SDDL subset, Linux-user mapping, and the listen/delegate checks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from httpsys_emu.urlacl import (ADMINISTRATORS_SID, EVERYONE_SID, LOCAL_SYSTEM_SID,
                                NETWORK_SERVICE_SID, Ace, UrlAcl, parse_sid, resolve_user,
                                unix_user_sid)
from httpsys_emu.winerror import WinError

# --------------------------------------------------------------------------- formatting


def test_listen_only_is_gx_like_netsh() -> None:
    assert UrlAcl.for_user(unix_user_sid(1000)).to_sddl() == "D:(A;;GX;;;S-1-22-1-1000)"


def test_listen_and_delegate_is_ga() -> None:
    acl = UrlAcl.for_user(unix_user_sid(1000), listen=True, delegate=True)
    assert acl.to_sddl() == "D:(A;;GA;;;S-1-22-1-1000)"


def test_delegate_only_is_gw() -> None:
    acl = UrlAcl.for_user(unix_user_sid(7), listen=False, delegate=True)
    assert acl.to_sddl() == "D:(A;;GW;;;S-1-22-1-7)"


def test_granting_nothing_is_refused() -> None:
    with pytest.raises(WinError) as info:
        UrlAcl.for_user(unix_user_sid(7), listen=False, delegate=False)
    assert info.value.code == 87


@pytest.mark.parametrize("text, canonical", [
    ("D:(A;;GX;;;WD)", "D:(A;;GX;;;WD)"),
    ("D:(A;;GX;;;S-1-1-0)", "D:(A;;GX;;;WD)"),
    ("d:(a;;gx;;;wd)", "D:(A;;GX;;;WD)"),
    ("D:(A;;GA;;;BA)", "D:(A;;GA;;;BA)"),
    ("D:(A;;GX;;;S-1-5-32-544)", "D:(A;;GX;;;BA)"),
    ("D:(A;;GXGW;;;S-1-22-1-1000)", "D:(A;;GA;;;S-1-22-1-1000)"),
    ("D:(A;;GRGX;;;s-1-22-1-0)", "D:(A;;GX;;;S-1-22-1-0)"),
    ("D:(A;;GX;;;WD)(A;;GA;;;S-1-22-1-1000)", "D:(A;;GX;;;WD)(A;;GA;;;S-1-22-1-1000)"),
    ("D:(A;;GX;;;SY)(A;;GX;;;NS)(A;;GX;;;LS)", "D:(A;;GX;;;SY)(A;;GX;;;NS)(A;;GX;;;LS)"),
    ("D:", "D:"),
])
def test_sddl_parse_then_format_is_canonical(text: str, canonical: str) -> None:
    assert UrlAcl.from_sddl(text).to_sddl() == canonical


@pytest.mark.parametrize("text", [
    "", "D", "(A;;GX;;;WD)", "O:BAD:(A;;GX;;;WD)", "D:P(A;;GX;;;WD)", "D:(D;;GX;;;WD)",
    "D:(A;CI;GX;;;WD)", "D:(A;;GX;x;;WD)", "D:(A;;GX;;;WD", "D:(A;;GX;;WD)", "D:(A;;GZ;;;WD)",
    "D:(A;;GR;;;WD)", "D:(A;;;;;WD)", "D:(A;;GX;;;S-1-5-21-1-2-3-1001)", "D:(A;;GX;;;XX)",
    "D:(A;;GX;;;S-1-22-2-100)", "D:(A;;GX;;;S-1-22-1-99999999999)", "D:(A;;GX;;;)",
    "D:(A;;GX;;;WD) ", "D:(A;;G;;;WD)",
])
def test_unsupported_sddl_is_error_87(text: str) -> None:
    with pytest.raises(WinError) as info:
        UrlAcl.from_sddl(text)
    assert info.value.code == 87


# --------------------------------------------------------------------------- access checks


def test_everyone_grants_every_uid() -> None:
    acl = UrlAcl.from_sddl("D:(A;;GX;;;WD)")
    assert acl.grants_listen(0) and acl.grants_listen(1000) and acl.grants_listen(65534)
    assert not acl.grants_delegate(1000)


def test_unix_user_grants_only_that_uid() -> None:
    acl = UrlAcl.from_sddl("D:(A;;GX;;;S-1-22-1-1000)")
    assert acl.grants_listen(1000)
    assert not acl.grants_listen(1001)
    assert not acl.grants_listen(0)


@pytest.mark.parametrize("alias", ["BA", "SY", "LS", "NS"])
def test_administrators_and_service_accounts_mean_root(alias: str) -> None:
    acl = UrlAcl.from_sddl(f"D:(A;;GA;;;{alias})")
    assert acl.grants_listen(0) and acl.grants_delegate(0)
    assert not acl.grants_listen(1000)


def test_rights_are_separate_per_ace() -> None:
    acl = UrlAcl.from_sddl("D:(A;;GW;;;S-1-22-1-5)(A;;GX;;;S-1-22-1-6)")
    assert acl.grants_delegate(5) and not acl.grants_listen(5)
    assert acl.grants_listen(6) and not acl.grants_delegate(6)


# --------------------------------------------------------------------------- users


def _uid_of(name: str) -> int | None:
    return {"octopus": 1000, "root": 0}.get(name)


@pytest.mark.parametrize("name, sid", [
    ("octopus", "S-1-22-1-1000"),
    ("\\octopus", "S-1-22-1-1000"),
    (".\\octopus", "S-1-22-1-1000"),
    ("BUILDBOX\\octopus", "S-1-22-1-1000"),
    ("buildbox\\octopus", "S-1-22-1-1000"),
    ("uid:4242", "S-1-22-1-4242"),
    ("\\uid:4242", "S-1-22-1-4242"),
    ("Everyone", EVERYONE_SID),
    ("\\Everyone", EVERYONE_SID),
    ("everyone", EVERYONE_SID),
    ("BUILTIN\\Administrators", ADMINISTRATORS_SID),
    ("NT AUTHORITY\\SYSTEM", LOCAL_SYSTEM_SID),
    ("NT AUTHORITY\\NETWORK SERVICE", NETWORK_SERVICE_SID),
])
def test_resolve_user(name: str, sid: str) -> None:
    assert resolve_user(name, uid_of=_uid_of, hostname="buildbox.example.com") == sid


@pytest.mark.parametrize("name", ["nosuchuser", "OTHERHOST\\octopus", "uid:", "uid:x",
                                  "uid:99999999999", "", "\\"])
def test_unknown_user_is_error_1332(name: str) -> None:
    with pytest.raises(WinError) as info:
        resolve_user(name, uid_of=_uid_of, hostname="buildbox")
    assert info.value.code == 1332
    assert info.value.message == "No mapping between account names and security IDs was done."


def test_resolve_real_user_root() -> None:
    assert resolve_user("root") == "S-1-22-1-0"


def test_display_user() -> None:
    def names(uid: int) -> str | None:
        return {1000: "octopus"}.get(uid)
    assert Ace("S-1-22-1-1000").display_user(names) == "\\octopus"
    assert Ace("S-1-22-1-1001").display_user(names) == "\\uid:1001"
    assert Ace(EVERYONE_SID).display_user(names) == "\\Everyone"
    assert Ace(ADMINISTRATORS_SID).display_user(names) == "BUILTIN\\Administrators"
    assert Ace("S-1-22-1-0").display_user() == "\\root"


# --------------------------------------------------------------------------- properties

_sids = st.one_of(
    st.sampled_from([EVERYONE_SID, ADMINISTRATORS_SID, LOCAL_SYSTEM_SID, NETWORK_SERVICE_SID,
                     "S-1-5-19"]),
    st.integers(0, 2**32 - 2).map(unix_user_sid),
)
_rights = st.sampled_from([(True, False), (False, True), (True, True)])
_aces = st.builds(lambda sid, r: Ace(sid, *r), _sids, _rights)
_acls = st.lists(_aces, max_size=6).map(lambda aces: UrlAcl(tuple(aces)))


@given(_acls)
def test_sddl_round_trip(acl: UrlAcl) -> None:
    assert UrlAcl.from_sddl(acl.to_sddl()) == acl


@given(_acls, st.randoms(use_true_random=False))
def test_sddl_parsing_ignores_letter_case(acl: UrlAcl, random: object) -> None:
    text = acl.to_sddl()
    mixed = "".join(c.lower() if random.random() < 0.5 else c  # type: ignore[attr-defined]
                    for c in text)
    assert UrlAcl.from_sddl(mixed) == acl


@given(st.text(alphabet="DA:();GXWRSBNYL-0123456789 ", max_size=60))
def test_sddl_parser_fails_only_with_error_87(text: str) -> None:
    try:
        acl = UrlAcl.from_sddl(text)
    except WinError as exc:
        assert exc.code == 87
    else:
        assert UrlAcl.from_sddl(acl.to_sddl()) == acl


@given(_aces)
def test_displayed_user_resolves_back_to_the_same_sid(ace: Ace) -> None:
    shown = ace.display_user(lambda uid: {0: "root"}.get(uid))
    expected = ADMINISTRATORS_SID if ace.sid == ADMINISTRATORS_SID else ace.sid
    assert resolve_user(shown, uid_of={"root": 0}.get, hostname="h") == expected


@given(st.integers(0, 2**32 - 2))
def test_unix_sid_parses(uid: int) -> None:
    assert parse_sid(f"S-1-22-1-{uid}") == unix_user_sid(uid)
