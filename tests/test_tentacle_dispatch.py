"""Request routing: service and method matching as Halibut does it, and the error shapes."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from octopus_comms.halibut.contracts import (
    CapabilitiesResponseV2,
    ScriptStatusRequestV2,
    ScriptTicket,
    StartScriptCommandV2,
)
from octopus_comms.halibut.messages import DataStream, RequestMessage, ResponseMessage
from octopus_comms.halibut.serializer import DEFAULT_SERIALIZER
from tentacle.dispatch import (
    AMBIGUOUS_MATCH,
    METHOD_NOT_FOUND,
    SERVICE_NOT_FOUND,
    Dispatcher,
    async_method_name,
)
from tentacle.services import Call, Operation, ServiceError
from tentacle.services.capabilities import CapabilitiesService


class Echo:
    """A test service: records calls, can fail on demand."""

    contract = "IEchoService"
    implementation = "Tests.EchoService"

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    def operations(self) -> Sequence[Operation]:
        return (
            Operation("Echo", self.echo, (str,)),
            Operation("Status", self.status, (ScriptStatusRequestV2,)),
            Operation("Maybe", self.maybe, ((str, None),)),
            Operation("Fail", self.fail, ()),
            Operation("Crash", self.crash, ()),
            Operation("Upload", self.upload, (str, DataStream)),
        )

    async def echo(self, call: Call, text: str) -> str:
        self.calls.append(("Echo", (text,)))
        return text

    async def status(self, call: Call, request: ScriptStatusRequestV2) -> ScriptTicket:
        return request.ticket

    async def maybe(self, call: Call, text: str | None) -> str:
        return repr(text)

    async def fail(self, call: Call) -> None:
        raise ServiceError("File not found: /nowhere")

    async def crash(self, call: Call) -> None:
        raise KeyError("boom")

    async def upload(self, call: Call, path: str, stream: DataStream) -> int:
        return call.take(stream).length


def request(service: str, method: str, *params: object) -> RequestMessage:
    return RequestMessage(id=f"{service}::{method}[1] / x", service=service, method=method,
                          params=list(params))


@pytest.fixture
def dispatcher() -> Dispatcher:
    return Dispatcher([Echo(), CapabilitiesService()])


@pytest.mark.parametrize("method", ["Echo", "EchoAsync", "echo", "ECHOASYNC", "echoasync"])
async def test_method_names_match_case_insensitively_with_or_without_async(dispatcher, method):
    outcome = await dispatcher.dispatch(request("IEchoService", method, "hi"), Call())
    assert outcome.ok
    assert outcome.response == ResponseMessage(id=f"IEchoService::{method}[1] / x", result="hi")
    assert outcome.operation == "IEchoService.Echo"


async def test_unknown_service_is_halibuts_service_not_found(dispatcher):
    outcome = await dispatcher.dispatch(request("IMissingService", "Echo"), Call())
    error = outcome.response.error
    assert error is not None and outcome.response.result is None
    assert error.message == "Service not found: IMissingService"
    assert error.halibut_error_type == "Halibut.Exceptions.ServiceNotFoundHalibutClientException"
    assert error.halibut_error_type == SERVICE_NOT_FOUND


async def test_service_names_are_exact(dispatcher):
    outcome = await dispatcher.dispatch(request("iechoservice", "Echo", "x"), Call())
    assert outcome.response.error.halibut_error_type == SERVICE_NOT_FOUND


async def test_unknown_method_is_halibuts_method_not_found(dispatcher):
    outcome = await dispatcher.dispatch(request("IEchoService", "Shout", "x"), Call())
    error = outcome.response.error
    assert error.message == "Method Tests.EchoService::ShoutAsync not found"
    assert error.halibut_error_type == "Halibut.Exceptions.MethodNotFoundHalibutClientException"
    assert error.halibut_error_type == METHOD_NOT_FOUND


@pytest.mark.parametrize("params", [(), ("a", "b"), (42,), (None,)])
async def test_arguments_that_fit_no_overload_are_an_ambiguous_match(dispatcher, params):
    outcome = await dispatcher.dispatch(request("IEchoService", "Echo", *params), Call())
    error = outcome.response.error
    assert error.halibut_error_type == AMBIGUOUS_MATCH
    assert error.message.startswith("Could not decide which candidate to call out of the following methods:")
    assert " - Tests.EchoService::EchoAsync(str)" in error.message
    assert "The request arguments were:" in error.message
    assert error.details.startswith("System.Reflection.AmbiguousMatchException: ")


async def test_null_is_accepted_only_where_the_operation_allows_it(dispatcher):
    outcome = await dispatcher.dispatch(request("IEchoService", "Maybe", None), Call())
    assert outcome.response.result == "None"


async def test_contract_arguments_are_type_checked(dispatcher):
    good = request("IEchoService", "Status", ScriptStatusRequestV2(ticket=ScriptTicket(task_id="T")))
    assert (await dispatcher.dispatch(good, Call())).response.result == ScriptTicket(task_id="T")
    bad = request("IEchoService", "Status", StartScriptCommandV2())
    assert (await dispatcher.dispatch(bad, Call())).response.error.halibut_error_type == AMBIGUOUS_MATCH


async def test_a_service_error_becomes_a_service_invocation_error(dispatcher):
    outcome = await dispatcher.dispatch(request("IEchoService", "Fail"), Call())
    error = outcome.response.error
    assert error.message == "File not found: /nowhere"
    assert error.halibut_error_type is None
    # Octopus maps this prefix to ServiceInvocationHalibutClientException
    assert error.details.startswith("System.Reflection.TargetInvocationException: "
                                    "Exception has been thrown by the target of an invocation.")


async def test_an_unexpected_exception_is_reported_and_answered(dispatcher):
    seen = []
    dispatcher = Dispatcher([Echo()], on_error=lambda req, exc: seen.append((req.method, exc)))
    outcome = await dispatcher.dispatch(request("IEchoService", "Crash"), Call())
    assert outcome.response.error.message == "'boom'"
    assert "KeyError" in outcome.response.error.details
    assert seen and seen[0][0] == "Crash" and isinstance(seen[0][1], KeyError)


async def test_a_missing_data_stream_is_an_error_not_a_crash(dispatcher):
    outcome = await dispatcher.dispatch(
        request("IEchoService", "Upload", "/x", DataStream.from_bytes(b"abc")), Call())
    assert "did not arrive" in outcome.response.error.message


async def test_capabilities_are_the_three_contracts(dispatcher):
    for method in ("GetCapabilities", "GetCapabilitiesAsync"):
        outcome = await dispatcher.dispatch(request("ICapabilitiesServiceV2", method), Call())
        assert outcome.response.result == CapabilitiesResponseV2(
            supported_capabilities=["IScriptService", "IFileTransferService", "IScriptServiceV2"])


async def test_every_response_survives_the_wire(dispatcher):
    """Error and result responses must be encodable exactly as the poller sends them."""
    for req in (request("IMissing", "X"), request("IEchoService", "Nope"),
                request("IEchoService", "Echo"), request("IEchoService", "Fail"),
                request("ICapabilitiesServiceV2", "GetCapabilities")):
        response = (await dispatcher.dispatch(req, Call())).response
        data, _ = DEFAULT_SERIALIZER.encode_envelope(response)
        decoded, _ = DEFAULT_SERIALIZER.decode_envelope(data, ResponseMessage)
        assert decoded == response


def test_two_services_for_one_contract_are_refused():
    with pytest.raises(ValueError):
        Dispatcher([Echo(), Echo()])


@given(st.text(min_size=1, max_size=30))
def test_async_method_name(method):
    name = async_method_name(method)
    assert name.endswith("Async")
    assert async_method_name(name) == name


@given(method=st.text(max_size=20), service=st.text(max_size=20),
       params=st.lists(st.one_of(st.none(), st.text(max_size=5), st.integers()), max_size=3))
async def test_any_request_gets_a_response_with_its_id(method, service, params):
    dispatcher = Dispatcher([Echo(), CapabilitiesService()])
    req = RequestMessage(id="r-1", service=service, method=method, params=params)
    outcome = await dispatcher.dispatch(req, Call())
    assert outcome.response.id == "r-1"
    assert outcome.ok or outcome.response.result is None
    assert not outcome.ok or outcome.response.error is None
