"""Calling services on a polling agent: typed proxies over the pending-request queue.

Halibut's ServiceModel layer on the server side: a method call becomes a RequestMessage with an
id of the form `IScriptServiceV2::StartScriptAsync[3] / <activity guid>`, waits in the agent's
queue, and the ResponseMessage's `result` or `error` comes back as a value or an exception.
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any

from .halibut import contracts as c
from .halibut.messages import DataStream, RequestMessage, ServiceEndPoint
from .queue import PendingRequestQueues


class RemoteError(Exception):
    """The agent answered with a ServerError."""

    def __init__(self, message: str, details: str | None, error_type: str | None) -> None:
        self.details = details
        self.error_type = error_type
        super().__init__(message)


_counter = itertools.count(1)


class AgentClient:
    """Calls on one agent (one subscription id) through this node's queues."""

    def __init__(self, queues: PendingRequestQueues, subscription_id: str, *,
                 remote_thumbprint: str | None = None, collection_timeout: float | None = None,
                 response_timeout: float | None = 600.0) -> None:
        self.queues = queues
        self.subscription_id = subscription_id
        self.endpoint = ServiceEndPoint(base_uri=subscription_id,
                                        remote_thumbprint=remote_thumbprint)
        self.collection_timeout = collection_timeout
        self.response_timeout = response_timeout

    async def call(self, service: str, method: str, *params: Any,
                   streams: tuple[DataStream, ...] = ()) -> Any:
        activity = uuid.uuid4()
        request = RequestMessage(
            id=f"{service}::{method}[{next(_counter)}] / {activity}", activity_id=activity,
            endpoint=self.endpoint, service=service, method=method, params=list(params))
        pending = await self.queues.send(self.subscription_id, request, streams,
                                         collection_timeout=self.collection_timeout,
                                         response_timeout=self.response_timeout)
        response = pending.response
        assert response is not None
        if response.error is not None:
            raise RemoteError(response.error.message or "remote error", response.error.details,
                              response.error.halibut_error_type)
        return response.result

    # -- IScriptServiceV2 ------------------------------------------------------------------------
    async def start_script(self, command: c.StartScriptCommandV2) -> c.ScriptStatusResponseV2:
        return await self.call(c.SERVICE_SCRIPT_V2, "StartScript", command)

    async def get_status(self, ticket: c.ScriptTicket, last_log_sequence: int
                         ) -> c.ScriptStatusResponseV2:
        return await self.call(c.SERVICE_SCRIPT_V2, "GetStatus",
                               c.ScriptStatusRequestV2(ticket=ticket,
                                                       last_log_sequence=last_log_sequence))

    async def cancel_script(self, ticket: c.ScriptTicket, last_log_sequence: int
                            ) -> c.ScriptStatusResponseV2:
        return await self.call(c.SERVICE_SCRIPT_V2, "CancelScript",
                               c.CancelScriptCommandV2(ticket=ticket,
                                                       last_log_sequence=last_log_sequence))

    async def complete_script(self, ticket: c.ScriptTicket) -> None:
        await self.call(c.SERVICE_SCRIPT_V2, "CompleteScript",
                        c.CompleteScriptCommandV2(ticket=ticket))

    # -- the others ------------------------------------------------------------------------------
    async def get_capabilities(self) -> c.CapabilitiesResponseV2:
        return await self.call(c.SERVICE_CAPABILITIES_V2, "GetCapabilities")

    async def upload_file(self, path: str, data: bytes) -> c.UploadResult:
        stream = DataStream.from_bytes(data)
        return await self.call(c.SERVICE_FILE_TRANSFER, "UploadFile", path, stream,
                               streams=(stream,))

    async def download_file(self, path: str) -> DataStream:
        return await self.call(c.SERVICE_FILE_TRANSFER, "DownloadFile", path)
