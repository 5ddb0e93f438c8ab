"""TLS contexts under one policy, and the choice of certificate per connection (httpsys.md §7).

Why pyOpenSSL and not `ssl`: the front door must ask for a client certificate and accept any
certificate (self-signed, expired) so that the application can pin it by thumbprint; the standard
library cannot do that. Every context here follows Mozilla's "intermediate" profile (hardening.md,
TLS): TLS 1.2 and 1.3 only, AEAD suites with ECDHE, groups X25519/P-256/P-384, no compression, no
renegotiation, the client's cipher order (intermediate says "prefer server ciphers: off").

Certificate choice happens during the ClientHello: `install_sni_switch` (or `switching_context`)
puts a servername callback on a certificate-less base context; the callback asks a chooser (e.g.
`CertificateSelector.select`) for the binding's context and switches the connection to it. The
callback needs the local address of the connection, which the shell stores as the connection's
app data (`ServerHandshakeInfo`; `tls.TLSStream` does this). When nothing matches, the connection
is switched to a context without a certificate, so the handshake fails with an alert and the
client never sees a certificate.

Deadlines are the caller's job: run the handshake under `trio.fail_after(handshake_timeout)` so a
byte-dripped ClientHello is closed on time (hardening.md, TLS).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from OpenSSL._util import lib as _openssl_lib  # SSL_CTX_set1_curves_list: pyOpenSSL has no set_groups

TLS12_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
TLS13_CIPHERSUITES = b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
GROUPS = b"X25519:P-256:P-384"
_BASE_SESSION_ID_CONTEXT = b"httpsys-emu"

VerifyCallback = Callable[[SSL.Connection, crypto.X509, int, int, int], bool]


def _accept_any_certificate(
    conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
) -> bool:
    """Accept every peer certificate: the application pins it by SHA-1 thumbprint afterwards."""
    return True


def _policy_context(method: int) -> SSL.Context:
    """A context with the intermediate policy and nothing else (no certificate, no verify mode)."""
    ctx = SSL.Context(method)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
    ctx.set_cipher_list(TLS12_CIPHERS)
    ctx.set_tls13_ciphersuites(TLS13_CIPHERSUITES)
    if _openssl_lib.SSL_CTX_set1_curves_list(ctx._context, GROUPS) != 1:  # noqa: SLF001
        raise RuntimeError("OpenSSL refused the group list " + GROUPS.decode())
    # Idle connections give their 34 KiB read/write buffers back (hardening: bounded memory).
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    return ctx


def _session_id_context(*parts: bytes) -> bytes:
    """A session id context (max 32 bytes) unique to a certificate and client-cert policy."""
    return hashlib.sha256(b"\0".join((_BASE_SESSION_ID_CONTEXT, *parts))).digest()


def server_context(
    cert_pem: bytes,
    key_pem: bytes,
    *,
    request_client_cert: bool,
    session_tickets: bool = True,
) -> SSL.Context:
    """A server context for one certificate (`cert_pem` may carry the chain after the leaf).

    With `request_client_cert` the server asks for a client certificate in the first handshake
    and accepts any certificate, or none (no FAIL_IF_NO_PEER_CERT); the application decides.
    `session_tickets=False` turns tickets off (resumption then needs the server-side cache).
    """
    ctx = _policy_context(SSL.TLS_SERVER_METHOD)
    leaf = _use_certificate(ctx, cert_pem, key_pem)
    if not session_tickets:
        ctx.set_options(SSL.OP_NO_TICKET)
    if request_client_cert:
        ctx.set_verify(SSL.VERIFY_PEER, _accept_any_certificate)
    leaf_der = leaf.public_bytes(serialization.Encoding.DER)
    # A session only resumes under the same certificate and client-certificate policy.
    ctx.set_session_id(_session_id_context(leaf_der, b"1" if request_client_cert else b"0"))
    return ctx


def client_context(cert_pem: bytes | None = None, key_pem: bytes | None = None) -> SSL.Context:
    """A client context that presents `cert_pem` when asked and accepts any server certificate.

    The caller pins the server by `TLSStream.server_thumbprint`; chain validation would only get
    in the way of self-signed Octopus certificates.
    """
    ctx = _policy_context(SSL.TLS_CLIENT_METHOD)
    ctx.set_verify(SSL.VERIFY_NONE)
    if cert_pem is not None:
        if key_pem is None:
            raise ValueError("a client certificate needs its private key")
        _use_certificate(ctx, cert_pem, key_pem)
    return ctx


def _use_certificate(ctx: SSL.Context, cert_pem: bytes, key_pem: bytes) -> x509.Certificate:
    """Install the leaf (first PEM block), any chain after it, and the key; returns the leaf."""
    certs = x509.load_pem_x509_certificates(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    ctx.use_certificate(certs[0])
    for extra in certs[1:]:
        ctx.add_extra_chain_cert(extra)
    ctx.use_privatekey(key)  # type: ignore[arg-type]
    ctx.check_privatekey()
    return certs[0]


def certificate_thumbprint(cert_der: bytes) -> str:
    """SHA-1 of a DER certificate, upper-case hex (the `certhash` of netsh)."""
    return hashlib.sha1(cert_der).hexdigest().upper()


# --------------------------------------------------------------------------------------------
# Certificate selection (pure)

BindingKind = Literal["ipport", "hostnameport", "ccs"]


@dataclass(frozen=True)
class Binding:
    """One `netsh http add sslcert` row, resolved to a ready context.

    - `ipport`: `ip` is an address literal (`0.0.0.0` and `::` are the wildcards), `hostname` None.
    - `hostnameport`: `hostname` is matched case-insensitively with the SNI name, `ip` None.
    - `ccs`: central certificate store for the port; `hostname` None serves any SNI name on the
      port, a name restricts the row to that SNI name (the store can be expanded per name).
    """

    kind: BindingKind
    ip: str | None
    hostname: str | None
    port: int
    context: SSL.Context


def normalise_ip(ip: str) -> str:
    """The canonical text of an address literal: brackets dropped, IPv4-mapped IPv6 as IPv4."""
    text = ip[1:-1] if ip.startswith("[") and ip.endswith("]") else ip
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def normalise_hostname(name: str) -> str:
    """Host names compare case-insensitively and without a trailing dot."""
    return name.rstrip(".").lower()


_WILDCARD_V4 = "0.0.0.0"
_WILDCARD_V6 = "::"


class CertificateSelector:
    """Which context serves a connection, by SNI name and local address (httpsys.md §7).

    Order: `hostnameport` for the SNI name; `ipport` for the exact local address; the wildcard
    `ipport` of the local address's family, then the other family's wildcard; `ccs` (needs SNI).
    No match → None, and the connection is dropped without a certificate.

    *Choice* on the wildcard families: Windows keeps `0.0.0.0:port` and `[::]:port` apart. Here a
    wildcard also covers the other family when that family has no wildcard of its own, because a
    dual-stack Linux listener sees IPv4 clients as `::ffff:a.b.c.d` (normalised to IPv4 first)
    and an administrator who bound `0.0.0.0:443` expects every client on 443 to be served.
    """

    def __init__(self, bindings: Iterable[Binding]) -> None:
        self._by_hostname: dict[tuple[str, int], SSL.Context] = {}
        self._by_ip: dict[tuple[str, int], SSL.Context] = {}
        self._ccs_any: dict[int, SSL.Context] = {}
        self._ccs_named: dict[tuple[str, int], SSL.Context] = {}
        for binding in bindings:
            if binding.kind == "hostnameport":
                if not binding.hostname:
                    raise ValueError("a hostnameport binding needs a host name")
                self._add(self._by_hostname, (normalise_hostname(binding.hostname), binding.port),
                          binding)
            elif binding.kind == "ipport":
                if not binding.ip:
                    raise ValueError("an ipport binding needs an address")
                self._add(self._by_ip, (normalise_ip(binding.ip), binding.port), binding)
            elif binding.kind == "ccs":
                if binding.hostname:
                    self._add(self._ccs_named,
                              (normalise_hostname(binding.hostname), binding.port), binding)
                else:
                    self._add(self._ccs_any, binding.port, binding)
            else:
                raise ValueError(f"unknown binding kind {binding.kind!r}")

    @staticmethod
    def _add(table: dict, key: object, binding: Binding) -> None:  # type: ignore[type-arg]
        if key in table:
            raise ValueError(f"duplicate {binding.kind} binding {key!r}")
        table[key] = binding.context

    def select(self, sni: str | None, local_ip: str, local_port: int) -> SSL.Context | None:
        """The context for a connection to `local_ip:local_port` that sent `sni` (or None)."""
        name = normalise_hostname(sni) if sni else None
        if name is not None:
            ctx = self._by_hostname.get((name, local_port))
            if ctx is not None:
                return ctx
        ip = normalise_ip(local_ip)
        ctx = self._by_ip.get((ip, local_port))
        if ctx is not None:
            return ctx
        is_v4 = ipaddress.ip_address(ip).version == 4
        wildcards = (_WILDCARD_V4, _WILDCARD_V6) if is_v4 else (_WILDCARD_V6, _WILDCARD_V4)
        for wildcard in wildcards:
            ctx = self._by_ip.get((wildcard, local_port))
            if ctx is not None:
                return ctx
        if name is not None:
            ctx = self._ccs_named.get((name, local_port)) or self._ccs_any.get(local_port)
            if ctx is not None:
                return ctx
        return None


# --------------------------------------------------------------------------------------------
# Switching the certificate during the ClientHello

Chooser = Callable[[str | None, str, int], SSL.Context | None]


@dataclass
class ServerHandshakeInfo:
    """Per-connection data the SNI switch reads and fills in (stored with `set_app_data`)."""

    local_ip: str | None
    local_port: int | None
    sni: str | None = None
    chosen: SSL.Context | None = None
    refused: bool = False
    chooser_error: Exception | None = None


@functools.cache
def _refusing_context() -> SSL.Context:
    """A context without any certificate: a handshake switched to it fails with an alert."""
    return _policy_context(SSL.TLS_SERVER_METHOD)


def _decode_sni(raw: bytes | None) -> str | None:
    if not raw:
        return None
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        return None


def install_sni_switch(base_ctx: SSL.Context, chooser: Chooser) -> None:
    """Make connections on `base_ctx` switch to `chooser(sni, local_ip, local_port)`'s context.

    Runs during the ClientHello (OpenSSL calls it with or without SNI). The chosen context's
    certificate, session id context and verify mode (client certificate request) apply to the
    connection; protocol options come from `base_ctx`, so build it with the same policy
    (`switching_context` does). No choice → the handshake fails and no certificate is sent.
    Turn session resumption off on `base_ctx` (see `switching_context`): OpenSSL resumes a
    session before this callback runs, whatever binding it was made under.
    """

    def on_client_hello(conn: SSL.Connection) -> None:
        info = conn.get_app_data()
        if not isinstance(info, ServerHandshakeInfo):
            info = ServerHandshakeInfo(local_ip=None, local_port=None)
            conn.set_app_data(info)
        info.sni = _decode_sni(conn.get_servername())
        chosen: SSL.Context | None = None
        if info.local_ip is not None and info.local_port is not None:
            try:
                chosen = chooser(info.sni, info.local_ip, info.local_port)
            except Exception as exc:  # a callback must not raise into OpenSSL: refuse instead
                info.chooser_error = exc
        if chosen is None:
            info.refused = True
            conn.set_context(_refusing_context())
            return
        info.chosen = chosen
        conn.set_context(chosen)
        # SSL_set_SSL_CTX swaps the certificate but keeps the verify mode the connection was
        # created with: copy the binding's client-certificate policy explicitly.
        mode = chosen.get_verify_mode()
        if mode & SSL.VERIFY_PEER:
            conn.set_verify(mode, _accept_any_certificate)
        else:
            conn.set_verify(SSL.VERIFY_NONE)

    base_ctx.set_tlsext_servername_callback(on_client_hello)


def switching_context(chooser: Chooser) -> SSL.Context:
    """A certificate-less base context under the policy, with the SNI switch installed.

    Session resumption is off on it. Measured with OpenSSL 3.0: OpenSSL looks a session up (TLS
    1.2 cache or ticket, TLS 1.3 PSK) with the base context's ticket keys and session id context,
    before the servername callback runs, so a session made under binding A resumes for an SNI
    name bound to B: B's certificate is never sent and B's client-certificate request is skipped.
    Per-binding resumption would need the binding chosen before the OpenSSL connection exists
    (peeking at the ClientHello); until then every connection does a full handshake.
    """
    ctx = _policy_context(SSL.TLS_SERVER_METHOD)
    ctx.set_options(SSL.OP_NO_TICKET)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_session_id(_session_id_context(b"switch"))
    install_sni_switch(ctx, chooser)
    return ctx
