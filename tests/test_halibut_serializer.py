"""Newtonsoft conventions: the .NET capture, `$type` placement, names, .NET value formats, leniency,
and round trips of every message and contract type."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import types
import typing
import uuid
import zlib
from typing import Any

import bson as pymongo_bson  # pymongo's codec, the independent reference (not ours)
import pytest
from hypothesis import given
from hypothesis import strategies as st

from octopus_comms.halibut import bson, contracts, wire
from octopus_comms.halibut.bson import Binary, BsonDocument, Int64
from octopus_comms.halibut.contracts import (
    CONTRACT_TYPES,
    CapabilitiesResponseV2,
    ProcessOutput,
    ProcessOutputSource,
    ProcessState,
    ScriptFile,
    ScriptIsolationLevel,
    ScriptStatusRequest,
    ScriptStatusResponse,
    ScriptTicket,
    ScriptType,
    StartScriptCommand,
    StartScriptCommandV2,
    UploadResult,
)
from octopus_comms.halibut.errors import EncodeError, ProtocolError, SerializationError
from octopus_comms.halibut.framing import compress
from octopus_comms.halibut.messages import (
    DataStream,
    RequestMessage,
    ResponseMessage,
    ServerError,
    ServiceEndPoint,
)
from octopus_comms.halibut.serializer import DEFAULT_SERIALIZER, Serializer
from octopus_comms.halibut.timespan import format_timespan, parse_timespan

UTC = dt.timezone.utc
CAPTURE = base64.b64decode(
    "nY6xTgNBDESHDTR8xRakQ1dRICSaRIfSBCHIDyxZk1tpsz6tfQE+mP/AgQVRU7gYe96Mn06A2ZpEwo7Qm3AX+j4SrgCsQk7Pk3abGoqM"
    "XLV7qKy85dw9ki2KUCMvffPCpYgzYyVKxIxq5YoP027fOk5NvDDDRdKQsuD2T1P/tqVRkyV3a9KB4z3rHU8lNsMyJyr667rxX0nt2B/L"
    "Nsfnr/8fCbfIYfgZzC3JAC+8NziVnR++Mf+acvZ0oGqbAwHnlWTKav5P"
)
KEEP_ALIVE = bytes.fromhex("0e000000 0a 4d65737361676500 00")
GUID = uuid.UUID("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")


def envelope_bytes(message: Any) -> bytes:
    return DEFAULT_SERIALIZER.encode_envelope(message)[0]


def message_of(message: Any) -> BsonDocument:
    """The decoded BSON of `message` as written in an envelope."""
    return bson.decode_document(envelope_bytes(message))["Message"]


def round_trip(message: Any, expected: type | None = None) -> Any:
    return DEFAULT_SERIALIZER.decode_envelope(envelope_bytes(message), expected)[0]


# -- the real .NET capture ----------------------------------------------------------------------


def test_capture_inflates_decodes_and_reencodes() -> None:
    raw = zlib.decompress(CAPTURE, -15)
    assert len(CAPTURE) == 198 and len(raw) == 339
    assert compress(raw) == CAPTURE  # level 6 reproduces the .NET deflate bytes
    message, streams = DEFAULT_SERIALIZER.decode_envelope(raw)
    assert streams == []
    assert message == ResponseMessage(
        id="sdsd",
        error=ServerError(
            message="foo",
            details="Halibut.Exceptions.MethodNotFoundHalibutClientException: foo",
            halibut_error_type="Halibut.Exceptions.MethodNotFoundHalibutClientException",
        ),
        result=None,
    )
    # Typed re-encoding is byte-identical to the capture minus the member no Halibut has
    # (computed independently with pymongo).
    without_unknown = pymongo_bson.decode(raw)
    del without_unknown["Message"]["error"]["BlahBlahBlah"]
    assert envelope_bytes(message) == pymongo_bson.encode(without_unknown)
    assert DEFAULT_SERIALIZER.decode_envelope(raw, ResponseMessage)[0] == message


def test_null_keep_alive_is_fourteen_bytes() -> None:
    data, streams = DEFAULT_SERIALIZER.encode_envelope(None)
    assert data == KEEP_ALIVE and len(data) == 14 and streams == []
    assert DEFAULT_SERIALIZER.decode_envelope(KEEP_ALIVE) == (None, [])
    assert DEFAULT_SERIALIZER.decode_envelope(KEEP_ALIVE, RequestMessage) == (None, [])


# -- layout: $type, names, order ----------------------------------------------------------------


def sample_request() -> RequestMessage:
    return RequestMessage(
        id="IScriptServiceV2::StartScriptAsync[1] / " + str(GUID),
        activity_id=GUID,
        endpoint=ServiceEndPoint(base_uri="poll://abcdefghijklmnopqrst/", remote_thumbprint="AB12"),
        service="IScriptServiceV2",
        method="StartScript",
        params=[
            StartScriptCommandV2(
                script_ticket=ScriptTicket(task_id="t-1"),
                script_body="echo hi",
                task_id="ServerTasks-1",
                duration_to_wait_for_script_to_finish=dt.timedelta(seconds=5),
                isolation=ScriptIsolationLevel.FullIsolation,
                isolation_mutex_name="RunningScript",
                scripts={ScriptType.Bash: "echo bash"},
                files=[ScriptFile(name="a.txt", contents=DataStream(id=GUID, length=3))],
                arguments=["-x"],
            ),
            "text",
            None,
            7,
        ],
    )


def test_request_message_layout() -> None:
    message = message_of(sample_request())
    assert list(message) == [
        "$type", "id", "activityId", "endpoint", "service", "method", "params",
    ]  # fmt: skip
    assert message["$type"] == "Halibut.Transport.Protocol.RequestMessage, Halibut"
    assert message["activityId"] == GUID
    endpoint = message["endpoint"]
    assert "$type" not in endpoint
    assert list(endpoint.items()) == [
        ("PollingRequestQueueTimeout", "00:02:00"),
        ("RetryListeningSleepInterval", "00:00:01"),
        ("RetryCountLimit", 5),
        ("ConnectionErrorRetryTimeout", "00:05:00"),
        ("TcpClientConnectTimeout", "00:01:00"),
        ("BaseUri", "poll://abcdefghijklmnopqrst/"),
        ("RemoteThumbprint", "AB12"),
        ("Proxy", None),
        ("IsWebSocketEndpoint", False),
    ]
    command, text, null, number = message["params"]
    assert (text, null, number) == ("text", None, 7)
    assert list(command) == [
        "$type", "ScriptTicket", "ScriptBody", "TaskId", "DurationToWaitForScriptToFinish",
        "Isolation", "ScriptIsolationMutexTimeout", "IsolationMutexName", "Scripts", "Files",
        "Arguments",
    ]  # fmt: skip
    assert command["$type"] == (
        "Octopus.Tentacle.Contracts.ScriptServiceV2.StartScriptCommandV2, Octopus.Tentacle.Contracts"
    )
    assert command["ScriptTicket"] == {"TaskId": "t-1"}
    assert command["DurationToWaitForScriptToFinish"] == "00:00:05"
    assert command["ScriptIsolationMutexTimeout"] == "24.20:31:23.6470000"
    assert command["Isolation"] == 1 and type(command["Isolation"]) is int
    assert command["Scripts"] == {"Bash": "echo bash"}
    assert list(command["Files"][0].items()) == [
        ("Name", "a.txt"),
        ("Contents", {"id": GUID, "length": 3}),
        ("EncryptionPassword", None),
    ]
    assert type(command["Files"][0]["Contents"]["length"]) is Int64


def test_response_layout_and_no_type_on_error_or_primitives() -> None:
    failed = message_of(ResponseMessage(id="x", error=ServerError(message="m")))
    assert list(failed) == ["$type", "id", "error", "result"]
    assert list(failed["error"].items()) == [
        ("message", "m"),
        ("details", None),
        ("HalibutErrorType", None),
    ]
    assert failed["result"] is None
    for primitive in ("s", 5, Int64(5), True, 1.5, GUID):
        assert message_of(ResponseMessage(id="x", result=primitive))["result"] == primitive
    typed = message_of(ResponseMessage(id="x", result=ScriptTicket(task_id="t")))["result"]
    assert list(typed.items()) == [
        ("$type", "Octopus.Tentacle.Contracts.ScriptTicket, Octopus.Tentacle.Contracts"),
        ("TaskId", "t"),
    ]


def test_long_members_are_int64_and_int_members_int32() -> None:
    response = ScriptStatusResponse(next_log_sequence=1, exit_code=2, state=ProcessState.Complete)
    document = message_of(ResponseMessage(id="x", result=response))["result"]
    assert type(document["NextLogSequence"]) is Int64
    assert type(document["ExitCode"]) is int and type(document["State"]) is int
    assert document["State"] == 2


def test_guid_is_dotnet_byte_order_subtype_4() -> None:
    data = envelope_bytes(RequestMessage(id="r", activity_id=GUID))
    assert b"\x05activityId\x00\x10\x00\x00\x00\x04" + GUID.bytes_le in data


def test_datetime_offset_is_a_bson_datetime() -> None:
    when = dt.datetime(2024, 2, 3, 4, 5, 6, 789_000, tzinfo=UTC)
    output = ProcessOutput(source=ProcessOutputSource.StdErr, occurred=when, text="x")
    document = message_of(ResponseMessage(id="x", result=output))["result"]
    assert list(document.items())[1:] == [("Source", 1), ("Occurred", when), ("Text", "x")]
    assert b"\x09Occurred\x00" in envelope_bytes(ResponseMessage(id="x", result=output))


def test_legacy_type_names_when_writing_like_a_tentacle() -> None:
    tentacle = Serializer(legacy_type_names=True)
    data, _ = tentacle.encode_envelope(ResponseMessage(id="x", result=ScriptTicket(task_id="t")))
    result = bson.decode_document(data)["Message"]["result"]
    assert result["$type"] == "Octopus.Shared.Contracts.ScriptTicket, Octopus.Shared"
    v2, _ = tentacle.encode_envelope(ResponseMessage(id="x", result=CapabilitiesResponseV2()))
    assert bson.decode_document(v2)["Message"]["result"]["$type"] == (
        "Octopus.Tentacle.Contracts.Capabilities.CapabilitiesResponseV2, Octopus.Tentacle.Contracts"
    )


def test_type_names_of_every_contract() -> None:
    names = {cls: wire.DEFAULT_REGISTRY.type_name(cls) for cls in CONTRACT_TYPES}
    v2 = {"StartScriptCommandV2", "ScriptStatusRequestV2", "ScriptStatusResponseV2",
          "CancelScriptCommandV2", "CompleteScriptCommandV2"}  # fmt: skip
    for cls, name in names.items():
        if cls.__name__ in v2:
            namespace = "Octopus.Tentacle.Contracts.ScriptServiceV2"
        elif cls is CapabilitiesResponseV2:
            namespace = "Octopus.Tentacle.Contracts.Capabilities"
        else:
            namespace = "Octopus.Tentacle.Contracts"
        assert name == f"{namespace}.{cls.__name__}, Octopus.Tentacle.Contracts"
        assert wire.DEFAULT_REGISTRY.resolve(f"Octopus.Shared.Contracts.{cls.__name__}, Octopus.Shared") is cls
    assert wire.DEFAULT_REGISTRY.type_name(ProcessOutput, legacy=True) == names[ProcessOutput]


# -- reading leniency ---------------------------------------------------------------------------


def read(document: dict[str, Any], expected: type | None = None) -> Any:
    data = bson.encode_document({"Message": document})
    return DEFAULT_SERIALIZER.decode_envelope(data, expected)[0]


def test_names_match_ignoring_case_and_unknown_members_are_skipped() -> None:
    message = read(
        {
            "$type": "Halibut.Transport.Protocol.ResponseMessage, Halibut",
            "ID": "a",
            "Result": {
                "$type": "Octopus.Shared.Contracts.UploadResult, Octopus.Shared",
                "fullpath": "/tmp/x",
                "HASH": "ab",
                "Length": 3,  # int32 where int64 is declared
                "Future": {"nested": [1, 2]},
            },
            "somethingNew": 1,
        }
    )
    assert message == ResponseMessage(id="a", result=UploadResult(full_path="/tmp/x", hash="ab", length=3))


def test_int_width_leniency_and_ranges() -> None:
    ticket = {"TaskId": "t"}
    request = {"$type": "x.ScriptStatusRequestV2, y", "Ticket": ticket, "LastLogSequence": 5}
    response = read({"$type": "x.ResponseMessage, y", "id": "1", "result": request})
    assert response.result.last_log_sequence == 5
    status = {"$type": "x.ScriptStatusResponse, y", "ExitCode": Int64(-1), "State": Int64(1)}
    result = read({"$type": "x.ResponseMessage, y", "result": status}).result
    assert result.exit_code == -1 and result.state is ProcessState.Running
    with pytest.raises(SerializationError, match="ExitCode"):
        read({"$type": "x.ResponseMessage, y", "result": {**status, "ExitCode": Int64(2**40)}})


def test_enums_read_from_numbers_and_names_and_keep_unknown_numbers() -> None:
    status = {"$type": "x.ScriptStatusResponse, y", "State": "complete", "Logs": [{"Source": 7}]}
    result = read({"$type": "x.ResponseMessage, y", "result": status}).result
    assert result.state is ProcessState.Complete
    assert result.logs[0].source == 7 and not isinstance(result.logs[0].source, enum.Enum)
    assert round_trip(ResponseMessage(id="", result=result)).result == result
    with pytest.raises(SerializationError, match="State"):
        read({"$type": "x.ResponseMessage, y", "result": {**status, "State": "Sleeping"}})


def test_dictionary_keys_are_enum_names() -> None:
    command = StartScriptCommand(scripts={ScriptType.PowerShell: "ps", ScriptType.Bash: "sh"})
    document = message_of(ResponseMessage(id="x", result=command))["result"]
    assert list(document["Scripts"].items()) == [("PowerShell", "ps"), ("Bash", "sh")]
    read_back = read(
        {"$type": "x.StartScriptCommand, y", "Scripts": {"bash": "b", "0": "p"}}, None
    )
    assert read_back.scripts == {ScriptType.Bash: "b", ScriptType.PowerShell: "p"}


def test_guids_read_from_text_and_legacy_binary() -> None:
    for raw in (str(GUID), Binary(3, GUID.bytes_le), Binary(4, GUID.bytes_le), GUID):
        message = read({"id": "r", "activityId": raw}, RequestMessage)
        assert message.activity_id == GUID
    with pytest.raises(SerializationError, match="activityId"):
        read({"activityId": "not-a-guid"}, RequestMessage)


def test_null_for_a_non_nullable_member_gives_its_default() -> None:
    message = read({"id": None, "params": None, "activityId": None}, RequestMessage)
    assert message == RequestMessage()


def test_unknown_type_is_kept_raw_and_written_back_unchanged() -> None:
    unknown = BsonDocument([("$type", "Some.Future.Thing, Future"), ("A", 1), ("B", [GUID])])
    message = read({"$type": "x.RequestMessage, y", "id": "r", "params": [unknown, "s"]})
    assert isinstance(message, RequestMessage)
    assert message.params[0] == unknown and list(message.params[0]) == ["$type", "A", "B"]
    assert message_of(message)["params"][0] == unknown


def test_values_wrapper_and_untyped_objects() -> None:
    wrapped = {"$type": "System.String[], mscorlib", "$values": ["a", "b"]}
    assert read({"$type": "x.ResponseMessage, y", "result": wrapped}).result == ["a", "b"]
    plain = read({"$type": "x.ResponseMessage, y", "result": {"A": 1}}).result
    assert plain == {"A": 1}


def test_expected_type_decides_without_type_and_mismatch_is_an_error() -> None:
    assert read({"id": "r"}, ResponseMessage) == ResponseMessage(id="r")
    request_bytes = envelope_bytes(RequestMessage(id="r"))
    with pytest.raises(SerializationError, match="expected a ResponseMessage"):
        DEFAULT_SERIALIZER.decode_envelope(request_bytes, ResponseMessage)
    with pytest.raises(SerializationError, match="no Message"):
        DEFAULT_SERIALIZER.decode_envelope(bson.encode_document({"Other": 1}))
    with pytest.raises(SerializationError):
        read("just a string", RequestMessage)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "result",
    [
        {"$type": "x.ScriptTicket, y", "TaskId": 5},
        {"$type": "x.ScriptStatusResponse, y", "Logs": "nope"},
        {"$type": "x.ScriptStatusResponse, y", "Logs": [None]},
        {"$type": "x.ScriptStatusResponse, y", "Ticket": "t"},
        {"$type": "x.StartScriptCommandV2, y", "DurationToWaitForScriptToFinish": "25:00:00"},
        {"$type": "x.StartScriptCommandV2, y", "Isolation": True},
        {"$type": "x.ProcessOutput, y", "Occurred": 5},
        {"$type": "x.ProcessOutput, y", "Occurred": "yesterday"},
        {"$type": "x.ScriptFile, y", "Contents": {"id": 1}},
        {"$type": "x.CapabilitiesResponseV2, y", "SupportedCapabilities": [1]},
    ],
)
def test_wrong_kinds_raise_serialization_errors_with_a_path(result: dict[str, Any]) -> None:
    with pytest.raises(SerializationError, match=r"Message\.result"):
        read({"$type": "x.ResponseMessage, y", "result": result})


# -- writing errors -----------------------------------------------------------------------------


@dataclasses.dataclass
class Unregistered:
    a: int = 0


@pytest.mark.parametrize(
    "message",
    [
        ResponseMessage(id="x", result=Unregistered()),
        ResponseMessage(id="x", result=ScriptStatusResponse(exit_code=2**31)),
        ResponseMessage(id="x", result=ScriptTicket(task_id=None)),  # type: ignore[arg-type]
        ResponseMessage(id="x", result=StartScriptCommand(script_isolation_mutex_timeout=dt.timedelta(days=2 * 10**7))),
        ResponseMessage(id="x", result=StartScriptCommand(scripts={"PowerShell": "x"})),  # type: ignore[dict-item]
        ResponseMessage(id="x", result=object()),
    ],
)
def test_unwritable_values_raise_encode_error(message: Any) -> None:
    with pytest.raises(EncodeError):
        DEFAULT_SERIALIZER.encode_envelope(message)


# -- TimeSpan -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (dt.timedelta(minutes=2), "00:02:00"),
        (dt.timedelta(days=1, hours=2, minutes=3, seconds=4), "1.02:03:04"),
        (dt.timedelta(milliseconds=500), "00:00:00.5000000"),
        (dt.timedelta(microseconds=1), "00:00:00.0000010"),
        (-dt.timedelta(hours=1, milliseconds=1), "-01:00:00.0010000"),
        (dt.timedelta(0), "00:00:00"),
        (dt.timedelta(milliseconds=2**31 - 1), "24.20:31:23.6470000"),
    ],
)
def test_timespan_constant_format(value: dt.timedelta, text: str) -> None:
    assert format_timespan(value) == text
    assert parse_timespan(text) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", dt.timedelta(days=1)),
        ("01:02", dt.timedelta(hours=1, minutes=2)),
        (" 1.02:03:04.5 ", dt.timedelta(days=1, hours=2, minutes=3, seconds=4, milliseconds=500)),
        ("00:00:00.0000001", dt.timedelta(0)),
        ("-0.00:00:01", -dt.timedelta(seconds=1)),
        ("10675199.02:48:05.4775807", dt.timedelta(days=10675199, seconds=10085, microseconds=477580)),
    ],
)
def test_timespan_parse_forms(text: str, value: dt.timedelta) -> None:
    assert parse_timespan(text) == value


@pytest.mark.parametrize(
    "text", ["", "abc", "24:00:00", "00:60:00", "00:00:60", "1.2.3", "00:00:00.12345678",
             "99999999", "١:٠٢", "1:2:3:4", "--1"],
)  # fmt: skip
def test_timespan_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_timespan(text)


MAX_TIMESPAN = dt.timedelta(microseconds=(2**63 - 1) // 10)


@given(st.timedeltas(min_value=-MAX_TIMESPAN, max_value=MAX_TIMESPAN))
def test_timespan_round_trip(value: dt.timedelta) -> None:
    assert parse_timespan(format_timespan(value)) == value


# -- every type round trips ---------------------------------------------------------------------

text = st.text(st.characters(codec="utf-8"), max_size=10)
datetimes = st.datetimes(timezones=st.just(UTC)).map(
    lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)
)


def strategy_for(declared: Any) -> st.SearchStrategy[Any]:
    """Random values of a declared member type, derived from the same hints the serializer reads."""
    origin, args = typing.get_origin(declared), typing.get_args(declared)
    if origin is typing.Annotated:
        bits = next(a.bits for a in args[1:] if isinstance(a, wire.IntWidth))
        return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if origin in (typing.Union, types.UnionType):
        present = [a for a in args if a is not type(None)]
        enums = [a for a in present if isinstance(a, type) and issubclass(a, enum.IntEnum)]
        inner = (
            st.one_of(st.sampled_from(list(enums[0])), st.integers(50, 60))
            if enums
            else strategy_for(present[0])
        )
        return st.one_of(st.none(), inner) if len(present) < len(args) else inner
    if origin is list:
        return st.lists(strategy_for(args[0]), max_size=3)
    if origin is dict:
        return st.dictionaries(strategy_for(args[0]), strategy_for(args[1]), max_size=2)
    if declared is Any:
        return st.none()  # ServiceEndPoint.Proxy; object slots are tested through params/result
    if declared is DataStream:
        return st.builds(DataStream, id=st.uuids(), length=st.integers(0, 2**40))
    simple = {
        str: text,
        bool: st.booleans(),
        uuid.UUID: st.uuids(),
        dt.timedelta: st.timedeltas(min_value=-MAX_TIMESPAN, max_value=MAX_TIMESPAN),
        dt.datetime: datetimes,
    }
    if declared in simple:
        return simple[declared]
    assert isinstance(declared, type) and dataclasses.is_dataclass(declared), declared
    hints = typing.get_type_hints(declared, include_extras=True)
    members = {
        f.name: strategy_for(hints[f.name]) for f in dataclasses.fields(declared) if wire.is_on_wire(f)
    }
    return st.builds(declared, **members)


ALL_TYPES = [*CONTRACT_TYPES, DataStream, ServiceEndPoint, ServerError]
contract_values = st.one_of([strategy_for(cls) for cls in CONTRACT_TYPES])
object_values = st.one_of(
    contract_values,
    st.none(),
    text,
    st.integers(bson.INT32_MIN, bson.INT32_MAX),
    st.integers(bson.INT64_MIN, bson.INT64_MAX).map(Int64),
    st.booleans(),
    st.uuids(),
    strategy_for(DataStream),
)
requests = st.builds(
    RequestMessage,
    id=text,
    activity_id=st.uuids(),
    endpoint=st.one_of(st.none(), strategy_for(ServiceEndPoint)),
    service=text,
    method=text,
    params=st.lists(object_values, max_size=3),
)
responses = st.builds(
    ResponseMessage,
    id=text,
    error=st.one_of(st.none(), strategy_for(ServerError)),
    result=object_values,
)


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.__name__)
@given(data=st.data())
def test_every_type_round_trips_as_an_object(cls: type, data: Any) -> None:
    value = data.draw(strategy_for(cls))
    for serializer in (DEFAULT_SERIALIZER, Serializer(legacy_type_names=True)):
        document = serializer.to_bson(value)
        assert next(iter(document)) == "$type"
        encoded = bson.encode_document({"v": document})
        assert serializer.from_bson(bson.decode_document(encoded)["v"]) == value
        assert serializer.from_bson(bson.decode_document(encoded)["v"], cls) == value


@given(st.one_of(requests, responses))
def test_messages_round_trip_with_their_data_streams_in_order(message: Any) -> None:
    data, streams = DEFAULT_SERIALIZER.encode_envelope(message)
    decoded, decoded_streams = DEFAULT_SERIALIZER.decode_envelope(data, type(message))
    assert decoded == message
    assert [(s.id, s.length) for s in decoded_streams] == [(s.id, s.length) for s in streams]
    assert DEFAULT_SERIALIZER.decode_envelope(data)[0] == message
    assert pymongo_bson.decode(data)["Message"]["$type"].startswith("Halibut.Transport.Protocol.")


@given(st.one_of(requests, responses), st.data())
def test_damaged_envelopes_raise_only_protocol_errors(message: Any, data: Any) -> None:
    encoded = bytearray(envelope_bytes(message))
    for bit in data.draw(st.lists(st.integers(0, len(encoded) * 8 - 1), min_size=1, max_size=3)):
        encoded[bit // 8] ^= 1 << (bit % 8)
    for expected in (None, RequestMessage, ResponseMessage):
        try:
            DEFAULT_SERIALIZER.decode_envelope(bytes(encoded), expected)
        except ProtocolError:
            pass


def test_contract_module_lists_all_spec_types() -> None:
    names = {cls.__name__ for cls in CONTRACT_TYPES}
    assert names == {
        "ScriptTicket", "StartScriptCommand", "ScriptStatusRequest", "ScriptStatusResponse",
        "CancelScriptCommand", "CompleteScriptCommand", "ProcessOutput", "ScriptFile",
        "UploadResult", "StartScriptCommandV2", "ScriptStatusRequestV2", "ScriptStatusResponseV2",
        "CancelScriptCommandV2", "CompleteScriptCommandV2", "CapabilitiesResponseV2",
    }  # fmt: skip
    assert [(m.name, m.value) for m in contracts.ProcessOutputSource] == [
        ("StdOut", 0), ("StdErr", 1), ("Debug", 2),
    ]  # fmt: skip
    assert ScriptStatusRequest().ticket == ScriptTicket()
