"""Halibut's envelope types: RequestMessage, ResponseMessage, ServerError, ServiceEndPoint, DataStream.

They mirror `Halibut.Transport.Protocol.*` and `Halibut.*` member for member, in .NET declaration
order (Newtonsoft writes properties in that order), with the lower-case `[JsonProperty]` names of
the envelope. Attributes whose .NET type is `object` are typed `Any` here: the serializer writes
`$type` into them.
"""

from __future__ import annotations

import datetime as _dt
import uuid
from dataclasses import dataclass
from typing import Any

from . import wire

EMPTY_GUID = uuid.UUID(int=0)


@wire.contract("Halibut.DataStream, Halibut")
@dataclass(kw_only=True)
class DataStream:
    """A byte stream that travels after the message that mentions it, matched by `id`.

    `data` is local only: the bytes to send, or the bytes received when the reader buffers
    DataStreams (see framing.MessageReader). Equality, as in Halibut, ignores the bytes."""

    id: uuid.UUID = wire.field("id", default=EMPTY_GUID)
    length: wire.Int64 = wire.field("length", default=0)
    data: bytes | None = wire.local(default=None)

    @classmethod
    def from_bytes(cls, data: bytes, *, id: uuid.UUID | None = None) -> DataStream:
        """A DataStream carrying `data`, with a fresh random id unless one is given."""
        return cls(id=id if id is not None else uuid.uuid4(), length=len(data), data=bytes(data))


@wire.contract("Halibut.ServiceEndPoint, Halibut")
@dataclass(frozen=True, kw_only=True)
class ServiceEndPoint:
    """The destination the server addressed (`endpoint`); receivers ignore it. Defaults are what
    an Octopus Server sends for a polling endpoint."""

    polling_request_queue_timeout: _dt.timedelta = _dt.timedelta(minutes=2)
    retry_listening_sleep_interval: _dt.timedelta = _dt.timedelta(seconds=1)
    retry_count_limit: wire.Int32 = 5
    connection_error_retry_timeout: _dt.timedelta = _dt.timedelta(minutes=5)
    tcp_client_connect_timeout: _dt.timedelta = _dt.timedelta(minutes=1)
    base_uri: str | None = None
    remote_thumbprint: str | None = None
    proxy: Any = None
    is_web_socket_endpoint: bool = False


@wire.contract("Halibut.Transport.Protocol.ServerError, Halibut")
@dataclass(frozen=True, kw_only=True)
class ServerError:
    """Why a call failed on the remote side. `halibut_error_type` names a Halibut exception
    (e.g. `Halibut.Exceptions.MethodNotFoundHalibutClientException`) or is None."""

    message: str | None = wire.field("message", default=None)
    details: str | None = wire.field("details", default=None)
    halibut_error_type: str | None = None


@wire.contract("Halibut.Transport.Protocol.RequestMessage, Halibut")
@dataclass(frozen=True, kw_only=True)
class RequestMessage:
    """One call: `service` (interface name) and `method` with `params` (each an `object`)."""

    id: str = wire.field("id", default="")
    activity_id: uuid.UUID = wire.field("activityId", default=EMPTY_GUID)
    endpoint: ServiceEndPoint | None = wire.field("endpoint", default=None)
    service: str = wire.field("service", default="")
    method: str = wire.field("method", default="")
    params: list[Any] = wire.field("params", default_factory=list)


@wire.contract("Halibut.Transport.Protocol.ResponseMessage, Halibut")
@dataclass(frozen=True, kw_only=True)
class ResponseMessage:
    """The answer to the request with the same `id`: `result` (an `object`), or `error`."""

    id: str = wire.field("id", default="")
    error: ServerError | None = wire.field("error", default=None)
    result: Any = wire.field("result", default=None)

    @classmethod
    def from_result(cls, request: RequestMessage, result: Any) -> ResponseMessage:
        """A successful response to `request`."""
        return cls(id=request.id, result=result)

    @classmethod
    def from_error(
        cls,
        request: RequestMessage,
        message: str,
        *,
        details: str | None = None,
        halibut_error_type: str | None = None,
    ) -> ResponseMessage:
        """A failed response to `request`."""
        error = ServerError(message=message, details=details, halibut_error_type=halibut_error_type)
        return cls(id=request.id, error=error)
