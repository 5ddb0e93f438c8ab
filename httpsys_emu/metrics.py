"""The front door's metrics in the Prometheus text format, rendered from counters it keeps anyway.

Why from existing counters: the access and HTTPERR logs, the connection table and the upstream
pool already count everything an operator alerts on, so a scrape reads them and allocates
nothing on the request path beyond one histogram observation per access-log line. Served over
the control socket (`httpsys-emu show metrics`) and, when asked, on a loopback-only HTTP port
(`httpsys-emu serve --metrics-port N`, see `metrics_http`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .exposition import Histogram, MetricFamily, render

if TYPE_CHECKING:
    from .frontdoor import FrontDoor

# Seconds from routing a request to the end of its response (a WebSocket lasts until it closes).
REQUEST_DURATION_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10.0, 60.0)
REGISTRATION_KINDS = ("in-process", "control", "forward")


def new_request_duration_histogram() -> Histogram:
    return Histogram(REQUEST_DURATION_BUCKETS)


def collect(door: "FrontDoor") -> list[MetricFamily]:
    """Every front-door family, read from the door's counters at this instant."""
    state = door.servicestate()
    log = door.log
    pool = door.proxy.pool

    registrations = {kind: 0 for kind in REGISTRATION_KINDS}
    for row in state["registrations"]:
        registrations[row["kind"]] = registrations.get(row["kind"], 0) + 1

    handshakes = MetricFamily("httpsys_tls_handshakes_total", "counter",
                              "TLS handshakes by result and negotiated version.")
    for version, count in sorted(door.handshakes_ok.items()):
        handshakes.add(count, result="ok", version=version)
    handshakes.add(door.handshakes_failed, result="failed", version="unknown")

    requests = MetricFamily("httpsys_requests_total", "counter",
                            "Requests delivered (access log lines) by route prefix and status.")
    for (route, status), count in sorted(log.requests_by_route_status.items()):
        requests.add(count, route=route, status=str(status))

    errors = MetricFamily("httpsys_errors_total", "counter",
                          "HTTPERR log lines by HTTP.sys reason (refusals, timers, drops).")
    for reason, count in sorted(log.errors_by_reason.items()):
        errors.add(count, reason=reason)

    kinds = MetricFamily("httpsys_registrations", "gauge",
                         "Prefixes routed now: in-process, control socket, static forwards.")
    for kind, count in sorted(registrations.items()):
        kinds.add(count, kind=kind)

    return [
        MetricFamily("httpsys_connections_open", "gauge",
                     "Client connections open now.").add(state["connections"]),
        MetricFamily("httpsys_connections_total", "counter",
                     "Client connections accepted and served.").add(door.connections_total),
        MetricFamily("httpsys_connections_refused_total", "counter",
                     "Client connections refused (limits, draining).").add(
                         door.connections_refused),
        handshakes,
        requests,
        errors,
        MetricFamily("httpsys_active_requests", "gauge",
                     "Requests being delivered now (counted against request queues).").add(
                         state["active_requests"]),
        kinds,
        MetricFamily("httpsys_upstream_connects_total", "counter",
                     "New connections opened to forward targets.").add(pool.connects),
        MetricFamily("httpsys_upstream_reuses_total", "counter",
                     "Pooled keep-alive connections reused for a forward.").add(pool.reuses),
        MetricFamily("httpsys_upstream_idle_connections", "gauge",
                     "Idle keep-alive connections in the upstream pool.").add(pool.idle_count()),
        MetricFamily("httpsys_request_duration_seconds", "histogram",
                     "Time from routing a request to the end of its response.").add_histogram(
                         log.request_duration),
        MetricFamily("httpsys_listeners", "gauge",
                     "Listening sockets.").add(len(state["listeners"])),
        MetricFamily("httpsys_config_generation", "gauge",
                     "The configuration generation applied (state.db counter).").add(
                         state["generation"] if state["generation"] is not None else -1),
        MetricFamily("httpsys_draining", "gauge",
                     "1 while shutting down (SIGTERM received).").add(int(state["draining"])),
    ]


def render_metrics(door: "FrontDoor") -> str:
    """The exposition text for one scrape."""
    return render(collect(door))
