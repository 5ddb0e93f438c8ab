"""`httpsys-emu`: the netsh-http-compatible command line (typer; the grammar lives in netsh.py).

Commands mirror `netsh http` (`add|delete|show sslcert|urlacl|iplisten|timeout`), plus our own
`forward` and `setting` nouns, noun-first spellings (`httpsys-emu urlacl add ...`) and `cert`
for the certificate store. netsh's messages (success and failure) go to stdout exactly as netsh
prints them; problems with the state directory and unexpected errors are one line on stderr.
Every failure exits 1; no traceback ever reaches the user.

Extending: register more `verb noun` commands in `HANDLERS` (e.g. `("show", "servicestate")`)
and add typer commands to `app`; `main()` is the console-script entry point.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from httpsys_emu.certstore import (DEFAULT_STORE, ERROR_NO_SUCH_LOGON_SESSION, KEY_TYPES,
                                   CertInfo, CertStore, normalize_store_name,
                                   normalize_thumbprint)
from httpsys_emu.netsh import (COMMANDS, NOUNS, VERBS, failure,
                               format_forwards, format_iplisten, format_settings,
                               format_sslcert_not_found, format_sslcerts, format_timeouts,
                               format_urlacls, parameter_incorrect, parse_ip_address,
                               parse_key_values, parse_setting_name, parse_timeout_type,
                               parse_uint, parse_url, sslcert_binding_from_args,
                               sslcert_key_from_args, urlacl_from_args, usage_text)
from httpsys_emu.statedir import StateDirError, ensure_state_dir, resolve_state_dir
from httpsys_emu.store import Store, StoreError
from httpsys_emu.urlacl import resolve_user
from httpsys_emu.winerror import ERROR_FILE_NOT_FOUND, ERROR_NONE_MAPPED, WinError

PROG = "httpsys-emu"


def _preformatted(text: str) -> str:
    """Mark every paragraph so click prints it as written (no re-wrapping)."""
    return "\n\n".join("\b\n" + block for block in text.split("\n\n"))


class CliSession:
    """Per-invocation state: the resolved state directory, opened lazily, and output helpers."""

    def __init__(self, state_dir_option: str | None, verbose: bool = False) -> None:
        self.state_dir_option = state_dir_option
        self.verbose = verbose
        self._store: Store | None = None

    @property
    def state_dir(self) -> Path:
        return resolve_state_dir(self.state_dir_option)

    def store(self) -> Store:
        if self._store is None:
            self._store = Store.open(self.state_dir)
        return self._store

    def certs(self) -> CertStore:
        return CertStore(ensure_state_dir(self.state_dir))

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    @staticmethod
    def say(text: str) -> None:
        typer.echo(text, nl=not text.endswith("\n"))

    def detail(self, exc: WinError) -> None:
        if self.verbose and exc.detail:
            typer.echo(f"({exc.detail})", err=True)

    def fail(self, action: str, exc: WinError) -> int:
        """netsh's two-line failure on stdout; exit status 1."""
        self.say(failure(action, exc.code))
        self.detail(exc)
        return 1

    def bad_parameter(self, exc: WinError) -> int:
        """`The parameter is incorrect.` for arguments netsh itself would refuse."""
        self.say(parameter_incorrect())
        self.detail(exc)
        return 1


Handler = Callable[[CliSession, list[str]], int]
HANDLERS: dict[tuple[str, str], Handler] = {}


def handler(verb: str, noun: str) -> Callable[[Handler], Handler]:
    def register(function: Handler) -> Handler:
        HANDLERS[(verb, noun)] = function
        return function
    return register


def _values(verb: str, noun: str, args: list[str]) -> dict[str, str]:
    return parse_key_values(args, COMMANDS[(verb, noun)].grammar)


def run_netsh(session: CliSession, verb: str, noun: str | None, args: list[str]) -> int:
    """Dispatch one `verb noun key=value...` command; returns the exit status."""
    verb = verb.lower()
    if noun is None:
        session.say(usage_text(verb=verb) + "\n")
        return 1
    function = HANDLERS.get((verb, noun.lower()))
    if function is None:
        session.say(f"The following command was not found: {verb} {noun}.")
        return 1
    try:
        return function(session, list(args))
    except (StateDirError, StoreError) as exc:
        typer.echo(f"{PROG}: {exc}", err=True)
        return 1
    finally:
        session.close()


# ----------------------------------------------------------------------------- sslcert

@handler("add", "sslcert")
def _add_sslcert(session: CliSession, args: list[str]) -> int:
    action = "SSL Certificate add failed"
    try:
        binding = sslcert_binding_from_args(_values("add", "sslcert", args))
    except WinError as exc:
        return session.bad_parameter(exc)
    if binding.certhash is not None:
        try:
            session.certs().load_pair(binding.certhash, binding.store_name)
        except WinError as exc:
            return session.fail(action, WinError(ERROR_NO_SUCH_LOGON_SESSION, exc.detail))
    try:
        session.store().add_sslcert(binding)
    except WinError as exc:
        return session.fail(action, exc)
    session.say("SSL Certificate successfully added")
    return 0


@handler("delete", "sslcert")
def _delete_sslcert(session: CliSession, args: list[str]) -> int:
    try:
        key = sslcert_key_from_args(_values("delete", "sslcert", args))
        assert key is not None
    except WinError as exc:
        return session.bad_parameter(exc)
    try:
        session.store().delete_sslcert(key)
    except WinError as exc:
        return session.fail("SSL Certificate deletion failed", exc)
    session.say("SSL Certificate successfully deleted")
    return 0


@handler("show", "sslcert")
def _show_sslcert(session: CliSession, args: list[str]) -> int:
    try:
        key = sslcert_key_from_args(_values("show", "sslcert", args))
    except WinError as exc:
        return session.bad_parameter(exc)
    store = session.store()
    if key is None:
        session.say(format_sslcerts(store.list_sslcerts()))
        return 0
    try:
        binding = store.get_sslcert(key)
    except WinError:
        session.say(format_sslcert_not_found())
        return 1
    session.say(format_sslcerts([binding]))
    return 0


# ----------------------------------------------------------------------------- urlacl

@handler("add", "urlacl")
def _add_urlacl(session: CliSession, args: list[str]) -> int:
    try:
        values = _values("add", "urlacl", args)
        acl = urlacl_from_args(values, resolve_user)
    except WinError as exc:
        if exc.code == ERROR_NONE_MAPPED:
            return session.fail("Create SDDL failed", exc)
        return session.bad_parameter(exc)
    try:
        session.store().add_urlacl(values["url"], acl)
    except WinError as exc:
        return session.fail("Url reservation add failed", exc)
    session.say("URL reservation successfully added")
    return 0


@handler("delete", "urlacl")
def _delete_urlacl(session: CliSession, args: list[str]) -> int:
    try:
        values = _values("delete", "urlacl", args)
    except WinError as exc:
        return session.bad_parameter(exc)
    try:
        session.store().delete_urlacl(values["url"])
    except WinError as exc:
        return session.fail("Url reservation delete failed", exc)
    session.say("URL reservation successfully deleted")
    return 0


@handler("show", "urlacl")
def _show_urlacl(session: CliSession, args: list[str]) -> int:
    try:
        values = _values("show", "urlacl", args)
        prefix = parse_url(values["url"]) if "url" in values else None
    except WinError as exc:
        return session.bad_parameter(exc)
    entries = session.store().list_urlacls()
    if prefix is not None:
        entries = [e for e in entries if e.prefix == prefix]
    session.say(format_urlacls(entries))
    return 0


# ----------------------------------------------------------------------------- iplisten

@handler("add", "iplisten")
def _add_iplisten(session: CliSession, args: list[str]) -> int:
    try:
        address = parse_ip_address(_values("add", "iplisten", args)["ipaddress"])
    except WinError as exc:
        return session.bad_parameter(exc)
    try:
        session.store().add_iplisten(address)
    except WinError as exc:
        return session.fail("IP address add failed", exc)
    session.say("IP address successfully added")
    return 0


@handler("delete", "iplisten")
def _delete_iplisten(session: CliSession, args: list[str]) -> int:
    try:
        address = parse_ip_address(_values("delete", "iplisten", args)["ipaddress"])
    except WinError as exc:
        return session.bad_parameter(exc)
    try:
        session.store().delete_iplisten(address)
    except WinError as exc:
        return session.fail("IP address delete failed", exc)
    session.say("IP address successfully deleted")
    return 0


@handler("show", "iplisten")
def _show_iplisten(session: CliSession, args: list[str]) -> int:
    try:
        _values("show", "iplisten", args)
    except WinError as exc:
        return session.bad_parameter(exc)
    session.say(format_iplisten(session.store().list_iplisten()))
    return 0


# ----------------------------------------------------------------------------- timeout

@handler("add", "timeout")
def _add_timeout(session: CliSession, args: list[str]) -> int:
    try:
        values = _values("add", "timeout", args)
        name = parse_timeout_type(values["timeouttype"])
        seconds = parse_uint(values["value"], 65535)
    except WinError as exc:
        return session.bad_parameter(exc)
    try:
        session.store().set_timeout(name, seconds)
    except WinError as exc:
        return session.fail("Timeout add failed", exc)
    session.say("Timeout successfully added")
    return 0


@handler("delete", "timeout")
def _delete_timeout(session: CliSession, args: list[str]) -> int:
    try:
        name = parse_timeout_type(_values("delete", "timeout", args)["timeouttype"])
    except WinError as exc:
        return session.bad_parameter(exc)
    try:
        session.store().delete_timeout(name)
    except WinError as exc:
        return session.fail("Timeout delete failed", exc)
    session.say("Timeout successfully deleted")
    return 0


@handler("show", "timeout")
def _show_timeout(session: CliSession, args: list[str]) -> int:
    try:
        _values("show", "timeout", args)
    except WinError as exc:
        return session.bad_parameter(exc)
    session.say(format_timeouts(session.store().timeouts()))
    return 0


# ----------------------------------------------------------------------------- forward

@handler("add", "forward")
def _add_forward(session: CliSession, args: list[str]) -> int:
    try:
        values = _values("add", "forward", args)
    except WinError as exc:
        return session.bad_parameter(exc)
    try:
        session.store().add_forward(values["url"], values["target"])
    except WinError as exc:
        return session.fail("Forward add failed", exc)
    session.say("Forward successfully added")
    return 0


@handler("delete", "forward")
def _delete_forward(session: CliSession, args: list[str]) -> int:
    try:
        values = _values("delete", "forward", args)
    except WinError as exc:
        return session.bad_parameter(exc)
    try:
        session.store().delete_forward(values["url"])
    except WinError as exc:
        return session.fail("Forward delete failed", exc)
    session.say("Forward successfully deleted")
    return 0


@handler("show", "forward")
def _show_forward(session: CliSession, args: list[str]) -> int:
    try:
        values = _values("show", "forward", args)
        prefix = parse_url(values["url"]) if "url" in values else None
    except WinError as exc:
        return session.bad_parameter(exc)
    forwards = session.store().list_forwards()
    if prefix is not None:
        forwards = [f for f in forwards if f.prefix == prefix]
    session.say(format_forwards(forwards))
    return 0


# ----------------------------------------------------------------------------- setting

@handler("add", "setting")
def _add_setting(session: CliSession, args: list[str]) -> int:
    try:
        values = _values("add", "setting", args)
        name = parse_setting_name(values["setting"])
        value = parse_uint(values["value"])
    except WinError as exc:
        return session.bad_parameter(exc)
    try:
        session.store().set_setting(name, value)
    except WinError as exc:
        return session.fail("Setting add failed", exc)
    session.say("Setting successfully added")
    return 0


@handler("delete", "setting")
def _delete_setting(session: CliSession, args: list[str]) -> int:
    try:
        name = parse_setting_name(_values("delete", "setting", args)["setting"])
    except WinError as exc:
        return session.bad_parameter(exc)
    try:
        session.store().delete_setting(name)
    except WinError as exc:
        return session.fail("Setting delete failed", exc)
    session.say("Setting successfully deleted")
    return 0


@handler("show", "setting")
def _show_setting(session: CliSession, args: list[str]) -> int:
    try:
        _values("show", "setting", args)
    except WinError as exc:
        return session.bad_parameter(exc)
    session.say(format_settings(session.store().settings()))
    return 0


# ----------------------------------------------------------------------------- typer app

ROOT_HELP = _preformatted(
    "HTTP.sys-style port sharing for Linux: configure it the way `netsh http` does.\n\n"
    "The configuration (state.db and certs/) lives in --state-dir, else\n"
    "$HTTPSYS_EMU_STATE_DIR, else $XDG_STATE_HOME/httpsys-emu or\n"
    "~/.local/state/httpsys-emu (/var/lib/httpsys-emu for root).\n\n"
    "Examples:\n"
    "  httpsys-emu cert new --subject \"CN=Example Website\" --dns example.com\n"
    "  httpsys-emu add sslcert ipport=0.0.0.0:443 certhash=THUMBPRINT "
    "appid={00112233-4455-6677-8899-aabbccddeeff}\n"
    "  httpsys-emu add urlacl url=https://+:443/OctopusComms/ user=octopus\n"
    "  httpsys-emu add forward url=https://+:443/ target=http://127.0.0.1:8080\n"
    "  httpsys-emu --state-dir ./state show sslcert")

app = typer.Typer(name=PROG, help=ROOT_HELP, add_completion=False, no_args_is_help=True,
                  rich_markup_mode=None, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]})

KEY_VALUE_SETTINGS = {"allow_extra_args": True, "ignore_unknown_options": True}
# The usage text in each help already explains the positional arguments, so typer's own
# "Arguments:" section (with its type labels) is hidden.
ArgsArgument = Annotated[list[str] | None,
                         typer.Argument(metavar="KEY=VALUE...", show_default=False, hidden=True)]


@app.callback()
def _root(ctx: typer.Context,
          state_dir: Annotated[str | None, typer.Option(
              "--state-dir", metavar="DIR",
              help="Configuration directory (state.db, certs/).")] = None,
          verbose: Annotated[bool, typer.Option(
              "--verbose", help="Explain failures on stderr.")] = False) -> None:
    ctx.obj = CliSession(state_dir, verbose)


def _session(ctx: typer.Context) -> CliSession:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, CliSession) else CliSession(None)


def _verb_help(verb: str, summary: str) -> str:
    return _preformatted(f"{summary}\n\nNOUN is one of: {', '.join(NOUNS)}.\n\n"
                         + usage_text(verb=verb))


def _make_verb_command(verb: str, summary: str) -> None:
    def command(ctx: typer.Context,
                noun: Annotated[str | None, typer.Argument(metavar="NOUN",
                                                              hidden=True)] = None,
                args: ArgsArgument = None) -> None:
        raise typer.Exit(run_netsh(_session(ctx), verb, noun, list(args or [])))
    app.command(verb, help=_verb_help(verb, summary), context_settings=KEY_VALUE_SETTINGS,
                short_help=summary)(command)


def _make_noun_command(noun: str, summary: str) -> None:
    def command(ctx: typer.Context,
                verb: Annotated[str, typer.Argument(metavar="add|delete|show", hidden=True)],
                args: ArgsArgument = None) -> None:
        if verb.lower() not in VERBS:
            typer.echo(f"The following command was not found: {noun} {verb}.")
            raise typer.Exit(1)
        raise typer.Exit(run_netsh(_session(ctx), verb, noun, list(args or [])))
    app.command(noun, help=_preformatted(
        f"{summary}. `httpsys-emu {noun} VERB ...` is the same as\n"
        f"`httpsys-emu VERB {noun} ...`, e.g. `httpsys-emu {noun} show`.\n\n"
        + usage_text(noun=noun)),
                context_settings=KEY_VALUE_SETTINGS, short_help=summary)(command)


_make_verb_command("add", "Add a configuration entry, like `netsh http add`.")
_make_verb_command("delete", "Delete a configuration entry, like `netsh http delete`.")
_make_verb_command("show", "Show configuration entries, like `netsh http show`.")
for _noun, _summary in (("sslcert", "SSL certificate bindings"),
                        ("urlacl", "URL reservations and their ACLs"),
                        ("iplisten", "The IP listen list"),
                        ("timeout", "Service-wide timeouts"),
                        ("forward", "Static forwards of a UrlPrefix to a backend"),
                        ("setting", "Limits and timers (HTTP.sys section 5)")):
    _make_noun_command(_noun, _summary)


@app.command("http", context_settings=KEY_VALUE_SETTINGS, hidden=True)
def _http(ctx: typer.Context, verb: Annotated[str, typer.Argument()],
          noun: Annotated[str | None, typer.Argument()] = None,
          args: ArgsArgument = None) -> None:
    """`httpsys-emu http add urlacl ...`: a netsh line with `netsh` replaced."""
    raise typer.Exit(run_netsh(_session(ctx), verb, noun, list(args or [])))


# ----------------------------------------------------------------------------- cert

cert_app = typer.Typer(help=_preformatted(
    "The certificate store (like Cert:\\LocalMachine\\My): <state>/certs/<STORE>/.\n\n"
    "Examples:\n"
    "  httpsys-emu cert new --subject \"CN=Example Website\" --dns example.com\n"
    "  httpsys-emu cert import server.pfx --password secret\n"
    "  httpsys-emu cert list\n"
    "  httpsys-emu cert export 9975B2FB620B857821AE5054CC43EFDADD75BCC2 > server.pem\n"
    "  httpsys-emu cert delete 9975B2FB620B857821AE5054CC43EFDADD75BCC2"),
    no_args_is_help=True, rich_markup_mode=None)
app.add_typer(cert_app, name="cert", short_help="The certificate store: new, import, list, "
              "export, delete.")

StoreOption = Annotated[str, typer.Option("--store", metavar="STORE",
                                          help="Certificate store name (MY, Root, ...).")]


def _cert_error(exc: WinError) -> None:
    typer.echo(f"{PROG}: Error {exc.code}: {exc.detail or exc.message}", err=True)
    raise typer.Exit(1)


def _cert_details(info: CertInfo, heading: str) -> None:
    rows = [("Store", info.store),
            ("Subject", info.subject),
            ("DNS names", ", ".join(info.dns_names) or "(none)"),
            ("Key", info.key_type + ("" if info.has_private_key else " (no private key)")),
            ("Valid from", f"{info.not_before:%Y-%m-%d %H:%M:%S} UTC"),
            ("Valid to", f"{info.not_after:%Y-%m-%d %H:%M:%S} UTC"),
            ("Serial", info.serial_number)]
    typer.echo(heading)
    for name, value in rows:
        typer.echo(f"    {name:<12} : {value}")
    typer.echo("Thumbprint (SHA-1):")
    typer.echo(info.thumbprint)


def _guard(ctx: typer.Context, body: Callable[[CliSession], None]) -> None:
    session = _session(ctx)
    try:
        body(session)
    except WinError as exc:
        _cert_error(exc)
    except (StateDirError, StoreError) as exc:
        typer.echo(f"{PROG}: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        session.close()


@cert_app.command("new", short_help="Create a self-signed certificate.", help=_preformatted(
    "Create a self-signed certificate (like New-SelfSignedCertificate); the last line\n"
    "printed is its SHA-1 thumbprint.\n\n"
    "Examples:\n"
    "  httpsys-emu cert new --subject \"CN=Example Website\"\n"
    "  httpsys-emu cert new --dns example.com --dns www.example.com --key ecdsa-p256 --days 90"))
def _cert_new(ctx: typer.Context,
              subject: Annotated[str | None, typer.Option(
                  "--subject", metavar="DN",
                  help="Distinguished name, e.g. \"CN=Example Website, O=Octopus\"; "
                  "default CN=<first --dns>.")] = None,
              dns: Annotated[list[str] | None, typer.Option(
                  "--dns", metavar="NAME",
                  help="DNS name (or IP) for the SAN; repeatable.")] = None,
              key: Annotated[str, typer.Option("--key", metavar="|".join(KEY_TYPES),
                                               help="Key type.")] = "rsa2048",
              days: Annotated[int, typer.Option("--days", metavar="N",
                                                help="Validity in days.")] = 365,
              store: StoreOption = DEFAULT_STORE) -> None:
    def body(session: CliSession) -> None:
        info = session.certs().new_self_signed(subject, list(dns or []), key, days, store)
        _cert_details(info, f"Created a self-signed certificate in store {info.store}")
    _guard(ctx, body)


@cert_app.command("import", short_help="Import PEM, DER or PKCS#12.", help=_preformatted(
    "Import a certificate: PEM (certificate, chain, optionally the key), DER, or PKCS#12\n"
    "(.pfx/.p12), recognised by content. The last line printed is the thumbprint.\n\n"
    "Examples:\n"
    "  httpsys-emu cert import server.pem --key server.key\n"
    "  httpsys-emu cert import server.pfx --password secret --store MY"))
def _cert_import(ctx: typer.Context,
                 path: Annotated[Path, typer.Argument(metavar="PATH", hidden=True)],
                 key: Annotated[Path | None, typer.Option(
                     "--key", metavar="KEYPATH", help="PEM private key file.")] = None,
                 password: Annotated[str | None, typer.Option(
                     "--password", metavar="PASSWORD", envvar="HTTPSYS_EMU_CERT_PASSWORD",
                     help="Password of the PKCS#12 file or encrypted key (or set "
                     "$HTTPSYS_EMU_CERT_PASSWORD, which stays out of `ps`).")] = None,
                 store: StoreOption = DEFAULT_STORE) -> None:
    def body(session: CliSession) -> None:
        info = session.certs().import_file(path, key, password, store)
        _cert_details(info, f"Imported a certificate into store {info.store}")
    _guard(ctx, body)


@cert_app.command("list", short_help="List certificates.", help=_preformatted(
    "List certificates: thumbprint, store, expiry, private key, subject.\n\n"
    "Examples:\n"
    "  httpsys-emu cert list\n"
    "  httpsys-emu cert list --store Root"))
def _cert_list(ctx: typer.Context,
               store: Annotated[str | None, typer.Option(
                   "--store", metavar="STORE", help="Only this store.")] = None) -> None:
    def body(session: CliSession) -> None:
        infos = session.certs().list(store)
        if not infos:
            where = f"store {normalize_store_name(store)}" if store else "any store"
            typer.echo(f"No certificates in {where}.")
            return
        width = max(5, max(len(i.store) for i in infos))
        typer.echo(f"{'Thumbprint':<40}  {'Store':<{width}}  {'Expires':<10}  Key  Subject")
        typer.echo(f"{'-' * 40}  {'-' * width}  {'-' * 10}  ---  {'-' * 7}")
        for i in infos:
            typer.echo(f"{i.thumbprint}  {i.store:<{width}}  {i.not_after:%Y-%m-%d}  "
                       f"{'Yes' if i.has_private_key else 'No ':<3}  {i.subject}")
    _guard(ctx, body)


@cert_app.command("export", short_help="Print a certificate as PEM.", help=_preformatted(
    "Print a certificate (and its chain) as PEM; --key adds the private key.\n\n"
    "Examples:\n"
    "  httpsys-emu cert export 9975B2FB620B857821AE5054CC43EFDADD75BCC2 > server.crt\n"
    "  httpsys-emu cert export \"99 75 b2 fb ...\" --key > server.pem"))
def _cert_export(ctx: typer.Context,
                 thumbprint: Annotated[str, typer.Argument(metavar="THUMBPRINT", hidden=True)],
                 store: StoreOption = DEFAULT_STORE,
                 key: Annotated[bool, typer.Option("--key",
                                                   help="Include the private key.")] = False
                 ) -> None:
    def body(session: CliSession) -> None:
        typer.echo(session.certs().export_pem(thumbprint, store, include_key=key), nl=False)
    _guard(ctx, body)


@cert_app.command("delete", short_help="Delete a certificate and its key.", help=_preformatted(
    "Delete a certificate and its key. Refused while an sslcert binding uses it,\n"
    "unless --force.\n\n"
    "Examples:\n"
    "  httpsys-emu cert delete 9975B2FB620B857821AE5054CC43EFDADD75BCC2\n"
    "  httpsys-emu cert delete 9975B2FB620B857821AE5054CC43EFDADD75BCC2 --store Root --force"))
def _cert_delete(ctx: typer.Context,
                 thumbprint: Annotated[str, typer.Argument(metavar="THUMBPRINT", hidden=True)],
                 store: StoreOption = DEFAULT_STORE,
                 force: Annotated[bool, typer.Option(
                     "--force", help="Delete even if a binding uses it.")] = False) -> None:
    def body(session: CliSession) -> None:
        thumb = normalize_thumbprint(thumbprint)
        store_name = normalize_store_name(store)
        certs = session.certs()
        if not certs.exists(thumb, store_name):
            raise WinError(ERROR_FILE_NOT_FOUND,
                           f"certificate {thumb} is not in store {store_name}")
        users = [b for b in session.store().list_sslcerts()
                 if b.certhash == thumb and b.store_name == store_name]
        if users and not force:
            keys = ", ".join(f"{b.key.kind.value}={b.key}" for b in users)
            typer.echo(f"{PROG}: certificate {thumb} is used by sslcert binding {keys}; "
                       "delete the binding first or use --force", err=True)
            raise typer.Exit(1)
        certs.delete(thumb, store_name)
        typer.echo("Certificate successfully deleted")
    _guard(ctx, body)


# ----------------------------------------------------------------------------- the daemon

@handler("show", "servicestate")
def _show_servicestate(session: CliSession, args: list[str]) -> int:
    try:
        _values("show", "servicestate", args)
    except WinError as exc:
        return session.bad_parameter(exc)
    from httpsys_emu.control_client import ControlUnavailable, call_blocking
    from httpsys_emu.servicestate import format_servicestate
    try:
        answer = call_blocking(session.state_dir, "servicestate")
    except ControlUnavailable as exc:
        typer.echo(f"{PROG}: the front door is not running ({exc})", err=True)
        return 1
    session.say(format_servicestate(answer["state"]))
    return 0


@handler("show", "metrics")
def _show_metrics(session: CliSession, args: list[str]) -> int:
    try:
        _values("show", "metrics", args)
    except WinError as exc:
        return session.bad_parameter(exc)
    from httpsys_emu.control_client import ControlUnavailable, call_blocking
    try:
        answer = call_blocking(session.state_dir, "metrics")
    except ControlUnavailable as exc:
        typer.echo(f"{PROG}: the front door is not running ({exc})", err=True)
        return 1
    session.say(str(answer["text"]))
    return 0


@app.command("serve", help=_preformatted(
    "Run the front door in the foreground: listen on every port that has an sslcert\n"
    "binding (on the iplisten addresses, or all), route by UrlPrefix, deliver to forwards,\n"
    "registered processes and in-process handlers. SIGHUP reloads, SIGTERM drains.\n\n"
    "Examples:\n  httpsys-emu --state-dir /var/lib/httpsys-emu serve\n"
    "  httpsys-emu --state-dir /var/lib/httpsys-emu serve --log-dir /var/log/httpsys-emu "
    "--metrics-port 9464"))
def _serve(ctx: typer.Context,
           quiet: Annotated[bool, typer.Option("--quiet",
                                               help="No access log on stderr.")] = False,
           log_dir: Annotated[str | None, typer.Option(
               "--log-dir", metavar="DIR",
               help="Where access.log and httperr.log go (default: <state-dir>/logs).")] = None,
           metrics_port: Annotated[str | None, typer.Option(
               "--metrics-port", metavar="[HOST:]PORT",
               help="Serve Prometheus metrics at http://127.0.0.1:PORT/metrics (loopback "
               "addresses only).")] = None) -> None:
    from httpsys_emu import serve as serve_module
    session = _session(ctx)
    try:
        path = ensure_state_dir(session.state_dir)
        serve_module.run(str(path), quiet=quiet, log_dir=log_dir, metrics=metrics_port)
    except (StateDirError, StoreError) as exc:
        typer.echo(f"{PROG}: {exc}", err=True)
        raise typer.Exit(1)


# ----------------------------------------------------------------------------- entry point

def main() -> None:
    """Console-script entry point: run the app; never let a traceback reach the user."""
    from httpsys_emu.climain import run_console_app
    run_console_app(app, PROG)

if __name__ == "__main__":
    main()
