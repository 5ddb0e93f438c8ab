"""The exceptions of the Halibut protocol core.

Everything a misbehaving peer can cause is a `ProtocolError` (drop the connection); everything the
caller can get wrong is a `LocalProtocolError` or an `EncodeError` (a bug on our side). Keeping the
two apart lets the fuzzers assert that hostile input never raises anything but `ProtocolError`.
"""

from __future__ import annotations


class HalibutError(Exception):
    """Base class of every error raised by `octopus_comms.halibut`."""


class ProtocolError(HalibutError):
    """The peer sent bytes that break the protocol; the connection cannot continue."""


class BsonError(ProtocolError):
    """A BSON document was malformed: bad length, bad type byte, bad UTF-8, too deep or too big."""


class SerializationError(ProtocolError):
    """A well-formed BSON document did not fit the Halibut message or contract it should carry."""


class FramingError(ProtocolError):
    """The byte stream around messages was wrong: deflate, DataStream blocks or control lines."""


class LocalProtocolError(HalibutError):
    """The caller drove a state machine wrongly, e.g. sent a response when none was due."""


class EncodeError(HalibutError, ValueError):
    """A Python value cannot be written in Halibut's encoding (out of range, wrong type, no data)."""
