"""The setting every comms test starts from: a front door state directory with a generated
certificate bound to a free port on loopback, and a comms home whose listener is on that port."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from httpsys_emu.certstore import CertStore
from httpsys_emu.store import Store as FrontDoorStore
from octopus_comms.settings import ServerSettings, save_settings
from tests.frontdoor_fixtures import bind_certificate, free_port


@dataclass(frozen=True)
class CommsSite:
    state: Path          # the front door's state directory
    home: Path           # the comms server's home
    port: int
    thumbprint: str      # the binding's certificate: what agents trust


def make_comms_site(root: Path, *, bind_ip: str = "0.0.0.0") -> CommsSite:
    state, home = root / "state", root / "home"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    info = CertStore(state).new_self_signed("CN=localhost", ["localhost"], "rsa2048", 30)
    with FrontDoorStore.open(state) as store:
        bind_certificate(store, port, info.thumbprint, ip=bind_ip)
        store.add_iplisten("127.0.0.1")
    save_settings(home, ServerSettings(comms_listen_websocket=(f"https://+:{port}/OctopusComms/",)))
    return CommsSite(state, home, port, info.thumbprint)
