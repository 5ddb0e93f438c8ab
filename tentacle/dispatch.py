"""RequestMessage → service operation → ResponseMessage, with Halibut's matching and error shapes.

Why mirror Halibut's `ServiceInvoker` closely: Octopus Server turns our errors back into .NET
exceptions by `HalibutErrorType` and by the text of `message`/`details` (e.g. a capabilities probe
that gets `ServiceNotFoundHalibutClientException` assumes an old agent). So:
- unknown service → "Service not found: X", `…ServiceNotFoundHalibutClientException`;
- unknown method (names match case-insensitively, with or without `Async`) →
  "Method T::NameAsync not found", `…MethodNotFoundHalibutClientException`;
- arguments that fit no overload → `…AmbiguousMethodMatchHalibutClientException` with
  Halibut's "Could not decide which candidate to call…" text;
- a service that raises → message = the exception's message, details starting with
  "System.Reflection.TargetInvocationException: …" (the server maps that to
  `ServiceInvocationHalibutClientException`), no error type.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from octopus_comms.halibut.messages import RequestMessage, ResponseMessage

from .services import Call, Operation, Service, ServiceError

__all__ = [
    "AMBIGUOUS_MATCH",
    "METHOD_NOT_FOUND",
    "SERVICE_NOT_FOUND",
    "DispatchOutcome",
    "Dispatcher",
    "async_method_name",
    "invocation_error",
]

_EXCEPTIONS = "Halibut.Exceptions."
SERVICE_NOT_FOUND = _EXCEPTIONS + "ServiceNotFoundHalibutClientException"
METHOD_NOT_FOUND = _EXCEPTIONS + "MethodNotFoundHalibutClientException"
AMBIGUOUS_MATCH = _EXCEPTIONS + "AmbiguousMethodMatchHalibutClientException"
TARGET_INVOCATION = (
    "System.Reflection.TargetInvocationException: "
    "Exception has been thrown by the target of an invocation."
)
_ASYNC = "Async"

ErrorReporter = Callable[[RequestMessage, BaseException], None]


def async_method_name(method: str) -> str:
    """Halibut's `AsyncCompatibilityHelper.GetAsyncMethodName`: `X` → `XAsync`, `XAsync` kept."""
    return method if method.endswith(_ASYNC) else method + _ASYNC


def _plain_name(method: str) -> str:
    return method[: -len(_ASYNC)] if method.lower().endswith(_ASYNC.lower()) else method


def invocation_error(request: RequestMessage, exc: BaseException) -> ResponseMessage:
    """The response for a service that raised `exc`."""
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    message = str(exc) or type(exc).__name__
    details = f"{TARGET_INVOCATION}\n ---> {name}: {message}"
    return ResponseMessage.from_error(request, message, details=details)


def _type_name(value: Any) -> str:
    return "<null>" if value is None else type(value).__name__


def _accepts(spec: type | tuple[type | None, ...], value: Any) -> bool:
    if isinstance(spec, tuple):
        if value is None:
            return None in spec
        return isinstance(value, tuple(t for t in spec if t is not None))
    return value is not None and isinstance(value, spec)


def _signature(service: Service, op: Operation) -> str:
    def one(spec: type | tuple[type | None, ...]) -> str:
        if isinstance(spec, tuple):
            return " | ".join("null" if t is None else t.__name__ for t in spec)
        return spec.__name__

    return f"{service.implementation}::{op.name}{_ASYNC}({', '.join(one(p) for p in op.params)})"


@dataclass(frozen=True)
class DispatchOutcome:
    """The response and how the call went, for the request log line."""

    response: ResponseMessage
    operation: str
    elapsed: float

    @property
    def ok(self) -> bool:
        return self.response.error is None


class Dispatcher:
    """Routes requests to services by contract name (exact, as Halibut's service factory does)."""

    def __init__(
        self,
        services: Iterable[Service],
        *,
        on_error: ErrorReporter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._services: dict[str, Service] = {}
        for service in services:
            if service.contract in self._services:
                raise ValueError(f"two services implement {service.contract}")
            self._services[service.contract] = service
        self._on_error = on_error
        self._clock = clock

    @property
    def contracts(self) -> Sequence[str]:
        return tuple(self._services)

    def resolve(self, request: RequestMessage) -> tuple[Operation, Service] | ResponseMessage:
        """The operation a request names, or the Halibut error response for a mismatch."""
        service = self._services.get(request.service)
        if service is None:
            return ResponseMessage.from_error(
                request,
                f"Service not found: {request.service}",
                halibut_error_type=SERVICE_NOT_FOUND,
            )
        wanted = _plain_name(request.method).lower()
        candidates = [op for op in service.operations() if op.name.lower() == wanted]
        if not candidates:
            return ResponseMessage.from_error(
                request,
                f"Method {service.implementation}::{async_method_name(request.method)} not found",
                halibut_error_type=METHOD_NOT_FOUND,
            )
        args = list(request.params)
        matches = [
            op
            for op in candidates
            if len(op.params) == len(args)
            and all(_accepts(spec, arg) for spec, arg in zip(op.params, args, strict=True))
        ]
        if len(matches) == 1:
            return matches[0], service
        if matches:
            lines = [
                "More than one possible match for the requested service method was found given "
                "the argument types. The matches were:",
                *(f" - {_signature(service, op)}" for op in matches),
            ]
        else:
            lines = [
                "Could not decide which candidate to call out of the following methods:",
                *(f" - {_signature(service, op)}" for op in candidates),
            ]
        lines += ["The request arguments were:", ", ".join(_type_name(a) for a in args)]
        message = "\n".join(lines) + "\n"
        return ResponseMessage.from_error(
            request,
            message,
            details=f"System.Reflection.AmbiguousMatchException: {message}",
            halibut_error_type=AMBIGUOUS_MATCH,
        )

    async def dispatch(self, request: RequestMessage, call: Call) -> DispatchOutcome:
        """Run the request's operation; every failure becomes an error response."""
        started = self._clock()
        resolved = self.resolve(request)
        if isinstance(resolved, ResponseMessage):
            return DispatchOutcome(resolved, f"{request.service}.{request.method}", 0.0)
        op, service = resolved
        name = f"{service.contract}.{op.name}"
        try:
            result = await op.handler(call, *request.params)
        except ServiceError as exc:
            response = invocation_error(request, exc)
        except Exception as exc:  # a bug or an OS error in a service: report, keep polling
            if self._on_error is not None:
                self._on_error(request, exc)
            response = invocation_error(request, exc)
        else:
            response = ResponseMessage.from_result(request, result)
        return DispatchOutcome(response, name, self._clock() - started)
