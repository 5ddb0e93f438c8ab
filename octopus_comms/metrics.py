"""The comms server's metrics in the Prometheus text format, and the loopback port serving them.

What an operator of polling agents needs to see: how many agents poll this node, how much work
waits for them (per subscription and in all), how long a request takes from enqueue to answer
and how it ended (answered, never collected, lost with its connection, cancelled), and the
script tasks by state. Served on a loopback-only port (`octopus-comms serve --metrics-port N`),
never on the public port the front door shares with the agents and the REST API.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from httpsys_emu.exposition import MetricFamily, render as render_families
from httpsys_emu.metrics_http import serve_metrics_http

from .store import TaskQuery, TaskState

if TYPE_CHECKING:
    from .server import CommsServer

METRICS_HOST = "127.0.0.1"


def collect(server: "CommsServer") -> list[MetricFamily]:
    """Every comms family, read from the server's live state and store at this instant."""
    queues = server.queues
    depth = queues.depth()

    agents = MetricFamily("octopus_comms_polling_connections", "gauge",
                          "Polling WebSocket connections identified and serving, by node.")
    agents.add(server.live.count(), node=server.node)

    per_subscription = MetricFamily(
        "octopus_comms_subscription_queue_depth", "gauge",
        "Requests queued for a polling subscription and not collected yet.")
    for subscription, count in sorted(depth.items()):
        per_subscription.add(count, subscription=subscription)

    latency = MetricFamily("octopus_comms_rpc_duration_seconds", "histogram",
                           "Time from enqueueing a request to its end, by outcome.")
    for outcome, histogram in queues.rpc_durations.items():
        latency.add_histogram(histogram, outcome=outcome)

    tasks = MetricFamily("octopus_comms_tasks", "gauge", "Server tasks by state.")
    for state in TaskState:
        _page, total = server.store.list_tasks(TaskQuery(states=frozenset({state})), take=0)
        tasks.add(total, state=state.value)

    return [
        agents,
        MetricFamily("octopus_comms_queued_requests", "gauge",
                     "Requests queued for all subscriptions on this node.").add(
                         sum(depth.values())),
        per_subscription,
        MetricFamily("octopus_comms_in_flight_requests", "gauge",
                     "Requests collected by an agent and not answered yet.").add(
                         queues.in_flight()),
        latency,
        tasks,
    ]


def render(server: "CommsServer") -> str:
    """The exposition text for one scrape."""
    return render_families(collect(server))


async def serve_metrics(port: int, render_fn: Callable[[], str], *,
                        log: Callable[[str], None] | None = None,
                        task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve `render_fn()` at http://127.0.0.1:`port`/metrics until cancelled.

    HTTP/1.1 with h11, a few connections at a time, every read and write under a deadline (see
    `httpsys_emu.metrics_http`, shared with the front door). `task_status.started(port)` gives
    the port bound (useful with 0). OSError when the port cannot be bound.
    """
    await serve_metrics_http(METRICS_HOST, port, render_fn, log=log, task_status=task_status)
