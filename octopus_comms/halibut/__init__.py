"""Halibut, the RPC protocol between Octopus Server and Tentacle, as a pure protocol core.

Shared by `octopus_comms` (the server) and `tentacle` (the agent). No I/O, no clocks: the modules
turn bytes into events and events into bytes; trio shells elsewhere move them and own deadlines.

  bson        the BSON subset Newtonsoft writes (strict, bounded decoder)
  timespan    .NET TimeSpan text
  wire        how dataclasses declare .NET type names, member names and int widths
  messages    RequestMessage, ResponseMessage, ServerError, ServiceEndPoint, DataStream
  contracts   the Tentacle service contracts and enums
  serializer  Newtonsoft conventions ↔ those dataclasses
  framing     control lines, raw-DEFLATE messages, DataStream blocks, MessageReader
  exchange    ServerExchange / SubscriberExchange state machines
"""

from .errors import (
    BsonError,
    EncodeError,
    FramingError,
    HalibutError,
    LocalProtocolError,
    ProtocolError,
    SerializationError,
)
from .messages import DataStream, RequestMessage, ResponseMessage, ServerError, ServiceEndPoint
from .serializer import DEFAULT_SERIALIZER, Serializer, decode_envelope, encode_envelope

__all__ = [
    "DEFAULT_SERIALIZER",
    "BsonError",
    "DataStream",
    "EncodeError",
    "FramingError",
    "HalibutError",
    "LocalProtocolError",
    "ProtocolError",
    "RequestMessage",
    "ResponseMessage",
    "SerializationError",
    "Serializer",
    "ServerError",
    "ServiceEndPoint",
    "decode_envelope",
    "encode_envelope",
]
