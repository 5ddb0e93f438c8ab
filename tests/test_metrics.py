"""Metrics: the exposition format (checked by a strict parser written here), the front door's
counters after real requests through a real front door, the three ways to read them (control
socket, `httpsys-emu show metrics`, the loopback HTTP port), the comms server's RPC outcomes,
and the loopback-only rule."""

from __future__ import annotations

import functools
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
from hypothesis import given, strategies as st

from httpsys_emu.control_client import call_blocking
from httpsys_emu.exposition import CONTENT_TYPE, Histogram, MetricFamily, render
from httpsys_emu.metrics import render_metrics
from httpsys_emu.metrics_http import (MetricsBindRefused, loopback_host, parse_listen,
                                      serve_metrics_http)
from httpsys_emu.sdnotify import notify
from octopus_comms.halibut.messages import RequestMessage, ResponseMessage
from octopus_comms.metrics import render as render_comms, serve_metrics
from octopus_comms.queue import CollectionTimeout, OutcomeUnknown
from octopus_comms.server import CommsServer
from octopus_comms.settings import ServerSettings, save_settings
from tests.frontdoor_fixtures import (CLI, applied, free_port, http_request, read_response,
                                      tls_connect, wait_for)
from tests.frontdoor_fixtures import front_door, site, upstream  # noqa: F401  (fixtures)

# ------------------------------------------------------------------ a strict exposition parser

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
_VALUE = r"[+-]?(?:Inf|NaN|[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?)"
_SAMPLE = re.compile(rf"({_NAME})(?:\{{(.*)\}})? ({_VALUE})")


@dataclass
class Family:
    name: str
    kind: str = ""
    help: str = ""
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)

    def value(self, suffix: str = "", **labels: str) -> float:
        return self.samples[(self.name + suffix, tuple(sorted(labels.items())))]

    def get(self, default: float = 0.0, **labels: str) -> float:
        return self.samples.get((self.name, tuple(sorted(labels.items()))), default)


def _unescape(text: str, allowed: str) -> str:
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            nxt = text[i + 1] if i + 1 < len(text) else ""
            assert nxt in allowed, f"bad escape \\{nxt!r} in {text!r}"
            out.append({"n": "\n", "\\": "\\", '"': '"'}[nxt])
            i += 2
            continue
        assert c != "\n"
        out.append(c)
        i += 1
    return "".join(out)


def _parse_labels(text: str) -> tuple[tuple[str, str], ...]:
    labels: list[tuple[str, str]] = []
    i = 0
    while i < len(text):
        m = re.compile(rf'({_LABEL})="').match(text, i)
        assert m, f"bad label at {text[i:]!r}"
        j = m.end()
        raw = []
        while text[j] != '"':
            if text[j] == "\\":
                raw.append(text[j:j + 2])
                j += 2
            else:
                raw.append(text[j])
                j += 1
        labels.append((m.group(1), _unescape("".join(raw), 'n\\"')))
        i = j + 1
        if i < len(text):
            assert text[i] == ",", f"expected ',' in {text!r}"
            i += 1
    names = [n for n, _ in labels]
    assert len(names) == len(set(names)), f"repeated label in {text!r}"
    return tuple(sorted(labels))


def parse_exposition(text: str) -> dict[str, Family]:
    """Text format 0.0.4, strictly: HELP and TYPE before samples, each family once and
    contiguous, valid names, escapes and values, histograms complete and cumulative."""
    assert text.endswith("\n"), "the exposition ends with a newline"
    families: dict[str, Family] = {}
    current: Family | None = None
    for line in text[:-1].split("\n"):
        assert line, "no blank lines"
        if line.startswith("# HELP "):
            name, _, doc = line[7:].partition(" ")
            assert re.fullmatch(_NAME, name) and name not in families, line
            current = families[name] = Family(name, help=_unescape(doc, "n\\"))
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert current is not None and current.name == name and not current.kind, line
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            current.kind = kind
        else:
            assert not line.startswith("#"), line
            m = _SAMPLE.fullmatch(line)
            assert m, f"bad sample line {line!r}"
            name, labels, value = m.group(1), _parse_labels(m.group(2) or ""), m.group(3)
            assert current is not None and current.kind, f"sample before TYPE: {line}"
            suffixes = ("_bucket", "_sum", "_count") if current.kind == "histogram" else ("",)
            assert name in [current.name + s for s in suffixes], f"{name} outside its family"
            key = (name, labels)
            assert key not in current.samples, f"duplicate sample {line}"
            current.samples[key] = float(value)
    for family in families.values():
        if family.kind == "histogram":
            _check_histogram(family)
        if family.kind == "counter":
            assert all(v >= 0 for v in family.samples.values()), family.name
    return families


def _check_histogram(family: Family) -> None:
    series: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
    for (name, labels), value in family.samples.items():
        if name.endswith("_bucket"):
            le = dict(labels)["le"]
            rest = tuple(kv for kv in labels if kv[0] != "le")
            series.setdefault(rest, []).append((float(le), value))
    assert series, f"{family.name} has no buckets"
    for rest, buckets in series.items():
        buckets.sort()
        assert buckets[-1][0] == math.inf, "the last bucket is +Inf"
        counts = [c for _le, c in buckets]
        assert counts == sorted(counts), "buckets are cumulative"
        assert family.samples[(family.name + "_count", rest)] == counts[-1]
        assert (family.name + "_sum", rest) in family.samples


# ------------------------------------------------------------------ the format itself

_label_values = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
_values = st.one_of(st.integers(0, 2**53), st.floats(allow_nan=True, allow_infinity=True))


@given(help_text=_label_values, values=st.lists(st.tuples(_label_values, _label_values, _values),
                                                 max_size=8, unique_by=lambda t: (t[0], t[1])))
def test_exposition_round_trips_any_label_value_and_number(help_text: str, values: list) -> None:
    family = MetricFamily("demo_total", "gauge", help_text)
    for a, b, value in values:
        family.add(value, route=a, status=b)
    parsed = parse_exposition(render([family]))["demo_total"]
    assert parsed.help == help_text and parsed.kind == "gauge"
    for a, b, value in values:
        got = parsed.value(route=a, status=b)
        assert (math.isnan(got) and math.isnan(value)) or got == float(value)


@given(st.lists(st.floats(-1e6, 1e6), max_size=50),
       st.lists(st.floats(0.001, 1000), min_size=1, max_size=6, unique=True))
def test_histogram_buckets_are_cumulative_and_complete(observations: list[float],
                                                       bounds: list[float]) -> None:
    histogram = Histogram(bounds)
    for value in observations:
        histogram.observe(value)
    family = parse_exposition(render([MetricFamily("h_seconds", "histogram", "h")
                                      .add_histogram(histogram, outcome="x")]))["h_seconds"]
    assert family.value("_count", outcome="x") == len(observations)
    for bound in bounds:
        le = repr(float(bound))
        assert family.value("_bucket", outcome="x", le=le) == sum(o <= bound
                                                                  for o in observations)
    assert family.value("_sum", outcome="x") == pytest.approx(sum(observations), abs=1e-6)


def test_invalid_names_and_duplicate_families_are_refused() -> None:
    with pytest.raises(ValueError):
        MetricFamily("bad-name", "counter", "")
    with pytest.raises(ValueError):
        MetricFamily("ok", "counter", "").add(1, **{"__reserved": "x"})
    with pytest.raises(ValueError):
        MetricFamily("h", "histogram", "").add_histogram(Histogram([1]), le="1")
    with pytest.raises(ValueError):
        render([MetricFamily("a", "gauge", ""), MetricFamily("a", "gauge", "")])


# ------------------------------------------------------------------ HTTP helpers

async def http_exchange(port: int, requests: list[tuple[str, str]],
                        host: str = "127.0.0.1") -> list[tuple[h11.Response, bytes]]:
    """Send (method, target) requests one after another on one connection."""
    answers = []
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(host, port)
        conn = h11.Connection(h11.CLIENT)
        async with stream:
            for method, target in requests:
                await stream.send_all(conn.send(h11.Request(
                    method=method, target=target, headers=[("Host", "metrics")]))
                    + conn.send(h11.EndOfMessage()))
                response, body = None, b""
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                    elif isinstance(event, h11.Response):
                        response = event
                    elif isinstance(event, h11.Data):
                        body += bytes(event.data)
                    elif isinstance(event, h11.EndOfMessage):
                        break
                assert response is not None
                answers.append((response, body))
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
    return answers


def _header(response: h11.Response, name: bytes) -> bytes | None:
    return next((v for n, v in response.headers if n == name.lower()), None)


# ------------------------------------------------------------------ the front door

async def _get(site: Any, paths: list[str]) -> list[int]:
    stream = await tls_connect(site.port)
    statuses = []
    buffer = bytearray()
    async with stream:
        for path in paths:
            await stream.send_all(http_request(path))
            response = await read_response(stream, buffer=buffer)
            statuses.append(response.status)
            if response.status >= 400:
                break
    return statuses


async def test_front_door_counters_move_after_real_requests(site, front_door, upstream,
                                                            tmp_path) -> None:
    site.store.add_forward(site.prefix("/app/"), upstream.target)
    await applied(front_door, site)
    before = parse_exposition(render_metrics(front_door))
    route = str(site.prefix("/app/"))
    assert before["httpsys_registrations"].get(kind="forward") == 1
    assert before["httpsys_requests_total"].get(route=route, status="200") == 0

    assert await _get(site, ["/app/a", "/app/b", "/app/c"]) == [200, 200, 200]
    assert await _get(site, ["/elsewhere"]) == [404]
    await site.access_lines(3)
    await wait_for(lambda: front_door.log.errors_by_reason.get("NotFound"))

    after = parse_exposition(render_metrics(front_door))
    assert after["httpsys_requests_total"].value(route=route, status="200") == 3
    assert after["httpsys_errors_total"].value(reason="NotFound") >= 1
    assert after["httpsys_connections_total"].value() - \
        before["httpsys_connections_total"].value() == 2
    ok = after["httpsys_tls_handshakes_total"]
    assert ok.get(result="ok", version="TLSv1.3") >= 2
    assert ok.value(result="failed", version="unknown") == 0
    assert after["httpsys_request_duration_seconds"].value("_count") == 3
    assert after["httpsys_upstream_connects_total"].value() >= 1
    assert after["httpsys_upstream_reuses_total"].value() >= 2      # keep-alive upstream
    assert after["httpsys_active_requests"].value() == 0
    assert after["httpsys_listeners"].value() >= 1

    # The same text through the control socket and through `httpsys-emu show metrics`.
    answer = await trio.to_thread.run_sync(functools.partial(
        call_blocking, site.state_dir, "metrics"))
    by_control = parse_exposition(answer["text"])
    assert by_control["httpsys_requests_total"].value(route=route, status="200") == 3
    result = await trio.run_process([str(CLI), "--state-dir", str(site.state_dir), "show",
                                     "metrics"], capture_stdout=True, capture_stderr=True,
                                    check=False)
    assert result.returncode == 0, result.stderr
    by_cli = parse_exposition(result.stdout.decode())
    assert by_cli["httpsys_request_duration_seconds"].value("_count") == 3

    # A failed handshake (plain HTTP on the TLS port) counts as failed.
    with trio.fail_after(10):
        raw = await trio.open_tcp_stream("127.0.0.1", site.port)
        async with raw:
            await raw.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            while await raw.receive_some(4096):
                pass
    await wait_for(lambda: front_door.handshakes_failed >= 1)
    failed = parse_exposition(render_metrics(front_door))["httpsys_tls_handshakes_total"]
    assert failed.value(result="failed", version="unknown") >= 1


async def test_loopback_http_endpoint_serves_metrics_only(site, front_door) -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(functools.partial(
            serve_metrics_http, "127.0.0.1", 0, lambda: render_metrics(front_door)))
        answers = await http_exchange(port, [("GET", "/metrics"), ("HEAD", "/metrics"),
                                             ("GET", "/metrics?x=1"), ("GET", "/")])
        (ok, body), (head, head_body), (query, _), (other, _) = answers
        assert ok.status_code == 200 and _header(ok, b"content-type") == CONTENT_TYPE.encode()
        assert "httpsys_connections_open" in parse_exposition(body.decode())
        assert head.status_code == 200 and head_body == b""
        assert query.status_code == 200
        assert other.status_code == 404
        [(post, _)] = await http_exchange(port, [("POST", "/metrics")])
        assert post.status_code == 405 and _header(post, b"allow") == b"GET, HEAD"
        nursery.cancel_scope.cancel()


async def test_metrics_endpoint_refuses_non_loopback_addresses() -> None:
    for host in ("0.0.0.0", "::", "192.0.2.1", "example.com", "[::ffff:10.0.0.1]"):
        with pytest.raises(MetricsBindRefused):
            await serve_metrics_http(host, 0, lambda: "")
    with pytest.raises(MetricsBindRefused):
        loopback_host("10.1.2.3")
    assert parse_listen("9464") == ("127.0.0.1", 9464)
    assert parse_listen("127.0.0.2:80") == ("127.0.0.2", 80)
    assert parse_listen("[::1]:9464") == ("::1", 9464)
    assert parse_listen("localhost:1") == ("127.0.0.1", 1)
    for bad in ("0.0.0.0:9464", "[::]:9464", "eth0:1"):
        with pytest.raises(MetricsBindRefused):
            parse_listen(bad)
    for malformed in ("::1:9464", "99999", "x", "127.0.0.1:"):
        with pytest.raises(ValueError):
            parse_listen(malformed)


async def test_serve_refuses_a_public_metrics_port_in_one_line(tmp_path: Path) -> None:
    result = await trio.run_process(
        [str(CLI), "--state-dir", str(tmp_path / "state"), "serve", "--metrics-port",
         "0.0.0.0:9464"], capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 1
    err = result.stderr.decode()
    assert "not a loopback address" in err and "Traceback" not in err
    assert not (tmp_path / "state" / "control.sock").exists()


async def test_serve_process_notifies_systemd_and_serves_metrics_and_logs(site) -> None:
    """`python -m httpsys_emu.serve --log-dir --metrics-port` as systemd would run it."""
    notify_path = Path(tempfile.mkdtemp(prefix="notify-")) / "notify.sock"
    receiver = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await receiver.bind(str(notify_path))
    log_dir = site.state_dir / "var-log"
    metrics_port = free_port()
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path))
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "httpsys_emu.serve", "--state-dir", str(site.state_dir),
         "--quiet", "--log-dir", str(log_dir), "--metrics-port", str(metrics_port)],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        with trio.fail_after(15):
            message = (await receiver.recv(4096)).decode()
        assert message.startswith("READY=1\n") and f":{site.port}" in message
        assert await _get(site, ["/nothing-here"]) == [400]     # no prefix on the port
        [(response, body)] = await http_exchange(metrics_port, [("GET", "/metrics")])
        assert response.status_code == 200
        families = parse_exposition(body.decode())
        assert families["httpsys_connections_total"].value() >= 1
        await wait_for(lambda: "Hostname" in (log_dir / "httperr.log").read_text())
        assert not (site.state_dir / "logs").exists()
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            await process.wait()
        receiver.close()
    assert process.returncode == 0


def test_notify_without_systemd_does_nothing(tmp_path: Path) -> None:
    assert notify("READY=1", environ={}) is False
    assert notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "absent")}) is False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(tmp_path / "n.sock"))
        assert notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "n.sock")})
        assert receiver.recv(100) == b"READY=1"


# ------------------------------------------------------------------ the comms server

SUBSCRIPTION = "poll://abcdefghijklmnopqrst/"


def _request(n: int) -> RequestMessage:
    import uuid
    return RequestMessage(id=f"IEchoService::SayHello[{n}] / {uuid.uuid4()}",
                          activity_id=uuid.uuid4(), endpoint=None,
                          service="IEchoService", method="SayHello", params=[])


@pytest.fixture
def comms_server(tmp_path: Path):
    home = tmp_path / "home"
    home.mkdir()
    save_settings(home, ServerSettings(comms_listen_websocket=("https://+:8443/OctopusComms/",)))
    server = CommsServer(home, tmp_path / "state", node="node-a")
    try:
        yield server
    finally:
        server.close()


async def test_comms_metrics_record_rpc_outcomes_and_queue_depth(comms_server) -> None:
    queues = comms_server.queues
    queue = queues.queue(SUBSCRIPTION)

    async def agent_answers() -> None:
        pending = await queue.collect(5, collector="test")
        assert pending is not None
        queue.complete(ResponseMessage(id=pending.request.id, error=None, result="hi"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent_answers)
        await queues.send(SUBSCRIPTION, _request(1))

    with pytest.raises(CollectionTimeout):
        await queues.send(SUBSCRIPTION, _request(2), collection_timeout=0.01)

    async def agent_vanishes() -> None:
        pending = await queue.collect(5, collector="test")
        assert pending is not None
        queue.lost(pending, "connection dropped")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent_vanishes)
        with pytest.raises(OutcomeUnknown):
            await queues.send(SUBSCRIPTION, _request(3))

    async with trio.open_nursery() as nursery:
        async def waits_forever() -> None:
            await queues.send(SUBSCRIPTION, _request(4))
        nursery.start_soon(waits_forever)
        await wait_for(lambda: queues.depth().get(SUBSCRIPTION) == 1)
        during = parse_exposition(render_comms(comms_server))
        assert during["octopus_comms_subscription_queue_depth"].value(
            subscription=SUBSCRIPTION) == 1
        assert during["octopus_comms_queued_requests"].value() == 1
        nursery.cancel_scope.cancel()

    families = parse_exposition(render_comms(comms_server))
    rpc = families["octopus_comms_rpc_duration_seconds"]
    for outcome in ("answered", "collection_timeout", "outcome_unknown", "cancelled"):
        assert rpc.value("_count", outcome=outcome) == 1, outcome
    assert families["octopus_comms_queued_requests"].value() == 0
    assert families["octopus_comms_in_flight_requests"].value() == 0
    assert families["octopus_comms_polling_connections"].value(node="node-a") == 0
    tasks = families["octopus_comms_tasks"]
    assert tasks.value(state="Queued") == 0 and tasks.value(state="Success") == 0

    async with trio.open_nursery() as nursery:
        port = await nursery.start(functools.partial(
            serve_metrics, 0, lambda: render_comms(comms_server)))
        [(response, body)] = await http_exchange(port, [("GET", "/metrics")])
        assert response.status_code == 200
        assert "octopus_comms_rpc_duration_seconds" in parse_exposition(body.decode())
        nursery.cancel_scope.cancel()
