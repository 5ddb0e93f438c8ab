"""The proxy's and the log's fast paths agree with the slow, obviously-right ones."""

from __future__ import annotations

import h11
from hypothesis import given, strategies as st

from httpsys_emu.logs import _field
from httpsys_emu.proxy import _h11_would_accept, build_upstream_request

def _mostly(alphabet: str, min_size: int, max_size: int) -> st.SearchStrategy[bytes]:
    """Plausible bytes most of the time (so the fast path is taken), arbitrary bytes sometimes."""
    return st.one_of(st.text(alphabet=alphabet, min_size=min_size, max_size=max_size)
                     .map(lambda t: t.encode("latin-1")),
                     st.binary(min_size=min_size, max_size=max_size))


TOKEN = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
VISIBLE = "".join(chr(c) for c in range(0x21, 0x7F))
VALUE = VISIBLE + " \t\x80\xff\x00\r\n"
methods = _mostly(TOKEN, 1, 10)
targets = _mostly(VISIBLE, 1, 60)
header = st.tuples(_mostly(TOKEN, 1, 20), _mostly(VALUE, 0, 40))


@given(methods, targets, st.lists(header, max_size=6))
def test_what_the_fast_check_accepts_h11_accepts(method: bytes, target: bytes,
                                                 headers: list[tuple[bytes, bytes]]) -> None:
    headers = [(b"Host", b"example.com"), *headers]
    if _h11_would_accept(method, target, headers):
        h11.Request(method=method, target=target, headers=headers)   # full validation: no error
        assert build_upstream_request(method, target, headers).target == target


@given(methods, targets, st.lists(header, max_size=6))
def test_what_h11_refuses_is_never_built_unchecked(method: bytes, target: bytes,
                                                   headers: list[tuple[bytes, bytes]]) -> None:
    headers = [(b"Host", b"example.com"), *headers]
    try:
        h11.Request(method=method, target=target, headers=headers)
    except h11.LocalProtocolError:
        assert not _h11_would_accept(method, target, headers)


def _slow_field(value: object) -> str:
    if value is None or value == "":
        return "-"
    return "".join("+" if c.isspace() else (c if c.isprintable() else "?") for c in str(value))


@given(st.one_of(st.text(max_size=50), st.integers(), st.none()))
def test_log_field_fast_path_matches_the_definition(value: object) -> None:
    assert _field(value) == _slow_field(value)
