"""Fuzz the Halibut core: BSON decoder, MessageReader, ServerExchange and SubscriberExchange.

The one property: hostile bytes raise nothing but ProtocolError. With atheris installed this is a
coverage-guided fuzzer (`python fuzz/fuzz_halibut.py [libFuzzer options]`); without it, a bounded
loop that mutates a corpus of valid conversations:
`python fuzz/fuzz_halibut.py --iterations 20000 --seed 1`.
"""

from __future__ import annotations

import argparse
import random
import sys
import uuid
import zlib
from collections.abc import Callable

from octopus_comms.halibut import bson, framing
from octopus_comms.halibut.contracts import (
    ScriptFile,
    ScriptStatusResponseV2,
    ScriptTicket,
    StartScriptCommandV2,
)
from octopus_comms.halibut.errors import ProtocolError
from octopus_comms.halibut.exchange import (
    NEED_DATA,
    PAUSED,
    End,
    Identified,
    Next,
    Proceed,
    Request,
    Response,
    ServerExchange,
    ServerIdentified,
    ServerState,
    SubscriberExchange,
    SubscriberState,
)
from octopus_comms.halibut.framing import DONE, MessageReader, ReaderLimits
from octopus_comms.halibut.messages import DataStream, RequestMessage, ResponseMessage

SUBSCRIPTION = "poll://abcdefghijklmnopqrst/"
LIMITS = ReaderLimits(max_inflated_bytes=1 << 20, max_buffered_stream_bytes=1 << 20)
MAX_EVENTS = 10_000
TURN = b"\x00TURN\x00"
"""Separates the peer's turns in exchange inputs: bytes of one turn are never fed with the next."""


def _request(n: int) -> RequestMessage:
    files = [ScriptFile(name="f", contents=DataStream.from_bytes(b"body" * n, id=uuid.UUID(int=n)))]
    command = StartScriptCommandV2(script_ticket=ScriptTicket(task_id=str(n)), files=files)
    return RequestMessage(id=f"IScriptServiceV2::StartScript[{n}] / x", params=[command, "s", n])


def _response(request: RequestMessage) -> ResponseMessage:
    return ResponseMessage.from_result(request, ScriptStatusResponseV2(next_log_sequence=3))


def _corpus() -> list[tuple[int, bytes]]:
    """Valid inputs, each with its target's index: an envelope, messages, both conversations."""
    request = _request(3)
    server_side = TURN.join(
        [
            framing.subscriber_identity(SUBSCRIPTION),
            b"".join(framing.encode_message(_response(_request(1)))) + framing.NEXT,
            b"\r\n" + framing.END,
        ]
    )
    agent_side = TURN.join(
        [
            framing.SERVER_IDENTITY + b"".join(framing.encode_message(None)),
            framing.PROCEED + b"".join(framing.encode_message(request)),
            framing.PROCEED,
        ]
    )
    return [
        (0, framing.DEFAULT_SERIALIZER.encode_envelope(request)[0]),
        (1, b"".join(framing.encode_message(request))),
        (1, b"".join(framing.encode_message(_response(request)))),
        (2, server_side),
        (3, agent_side),
    ]


def _pieces(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(4)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)]) if b > a]


def fuzz_bson(data: bytes, rng: random.Random) -> None:
    framing.DEFAULT_SERIALIZER.decode_envelope(data)
    bson.decode_document(data)


def fuzz_reader(data: bytes, rng: random.Random) -> None:
    reader = MessageReader(limits=LIMITS, stream_data=rng.random() < 0.5)
    for piece in _pieces(data, rng):
        reader.receive_data(piece)
        for _ in range(MAX_EVENTS):
            event = reader.next_event()
            if event is NEED_DATA or event is DONE:
                break


def _drive(exchange: ServerExchange | SubscriberExchange, data: bytes, rng: random.Random) -> None:
    pieces = [piece for turn in data.split(TURN) for piece in _pieces(turn, rng)] + [b""]
    sent_requests = 0
    for _ in range(MAX_EVENTS):
        if exchange.closed:
            return
        event = exchange.next_event()
        if event is NEED_DATA:
            if not pieces:
                return
            exchange.receive_data(pieces.pop(0))
        elif event is PAUSED:
            if isinstance(exchange, ServerExchange) and exchange.state is ServerState.IDLE:
                sent_requests += 1
            _answer(exchange, sent_requests)


def _answer(exchange: ServerExchange | SubscriberExchange, sent_requests: int) -> None:
    """Policy: the server sends one real request, then keep-alives; the agent answers and polls."""
    if isinstance(exchange, ServerExchange):
        if exchange.state is ServerState.SEND_IDENTITY:
            exchange.send(ServerIdentified())
        elif exchange.state is ServerState.SEND_PROCEED:
            exchange.send(Proceed())
        else:
            exchange.send(Request(_request(1) if sent_requests == 1 else None))
        return
    if exchange.state is SubscriberState.SEND_IDENTITY:
        exchange.send(Identified(SUBSCRIPTION))
    elif exchange.state is SubscriberState.SEND_RESPONSE:
        assert exchange.in_flight is not None
        exchange.send(Response(_response(exchange.in_flight)))
    else:
        exchange.send(Next() if exchange.in_flight is None else End())


def fuzz_server(data: bytes, rng: random.Random) -> None:
    _drive(ServerExchange(limits=LIMITS, stream_data=rng.random() < 0.5), data, rng)


def fuzz_subscriber(data: bytes, rng: random.Random) -> None:
    agent = SubscriberExchange(limits=LIMITS, stream_data=rng.random() < 0.5)
    agent.send(Identified(SUBSCRIPTION))
    _drive(agent, data, rng)


TARGETS: list[Callable[[bytes, random.Random], None]] = [
    fuzz_bson,
    fuzz_reader,
    fuzz_server,
    fuzz_subscriber,
]


def check_one(data: bytes) -> None:
    """One fuzz case: the first byte picks the target and seeds the splits."""
    if not data:
        return
    target = TARGETS[data[0] % len(TARGETS)]
    try:
        target(data[1:], random.Random(data[0]))
    except ProtocolError:
        pass


def _mutate(sample: bytes, rng: random.Random) -> bytes:
    data = bytearray(sample)
    for _ in range(rng.randrange(1, 5)):
        choice = rng.randrange(6)
        if choice == 0 and data:
            bit = rng.randrange(len(data) * 8)
            data[bit // 8] ^= 1 << (bit % 8)
        elif choice == 1 and data:
            del data[rng.randrange(len(data)) :]
        elif choice == 2:
            data[rng.randrange(len(data) + 1) : 0] = rng.randbytes(rng.randrange(1, 9))
        elif choice == 3 and data:
            start = rng.randrange(len(data))
            del data[start : start + rng.randrange(1, 9)]
        elif choice == 4:
            data += zlib.compress(rng.randbytes(rng.randrange(40)))[2:-4]
        elif data:
            data[rng.randrange(len(data))] = rng.choice([0x00, 0x01, 0x7F, 0x80, 0xFF])
    return bytes(data)


def run_random(iterations: int, seed: int) -> None:
    """The bounded fallback: mutate the corpus `iterations` times; any other exception escapes."""
    rng = random.Random(seed)
    corpus = _corpus()
    for index in range(iterations):
        target, base = rng.choice(corpus)
        selector = bytes([rng.randrange(64) * len(TARGETS) + target])
        sample = base if rng.random() < 0.05 else _mutate(base, rng)
        if rng.random() < 0.1:
            sample = rng.randbytes(rng.randrange(200))
        try:
            check_one(selector + sample)
        except Exception:
            print(f"iteration {index}: input {(selector + sample).hex()}", file=sys.stderr)
            raise


def main() -> None:
    try:
        import atheris  # type: ignore
    except ImportError:
        atheris = None
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    if atheris is None or "--iterations" in " ".join(sys.argv):
        args = parser.parse_args()
        run_random(args.iterations, args.seed)
        print(f"{args.iterations} cases, only ProtocolError raised")
        return
    atheris.Setup(sys.argv, check_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
