"""The exception tree of ehr-bridge.

Errors from libraries underneath are translated once, at the boundary where
they occur (``raise X(...) from exc``), so the rest of the code reasons about
these types only::

    BridgeError
    ├── ConfigError             invalid configuration; names the YAML path
    ├── MappingError            a mapping file is invalid (schema or compile)
    ├── HL7Error                inbound HL7 could not be read
    │   ├── FramingError        bytes outside an MLLP frame, oversize frame
    │   ├── ParseError          no usable MSH, bad delimiters, bad encoding
    │   └── ValidationError     strict validation findings (hl7apy)
    ├── FhirError               a FHIR notification or fetch failed; carries the HTTP status
    │   │                       and the OperationOutcome issue code to answer with
    │   ├── OffBaseReference    a reference outside the configured FHIR base (SSRF guard)
    │   └── FetchError          the FHIR server could not be read (transient unless 4xx)
    ├── StoreError              the durable store failed; nothing was ACKed
    └── DeliveryError           raised by outbound adapters from ``send``
        ├── Retryable           transient; the worker retries (``defer`` honoured)
        └── Permanent           retrying cannot help; the delivery goes dead

Each ``HL7Error`` carries the HL7 table 0357 error code and, where known, the
ERR-2 location, so that the ACK builder can answer precisely.
"""

from __future__ import annotations

__all__ = [
    "BridgeError",
    "ConfigError",
    "DeliveryError",
    "FetchError",
    "FhirError",
    "FramingError",
    "HL7Error",
    "MappingError",
    "OffBaseReference",
    "ParseError",
    "Permanent",
    "Retryable",
    "StoreError",
    "ValidationError",
]


class BridgeError(Exception):
    """Base class of every error raised on purpose by ehr-bridge."""


class ConfigError(BridgeError):
    """Configuration is invalid. ``path`` is the dotted YAML path, e.g. ``routes[2].channels``."""

    def __init__(self, message: str, *, path: str = "") -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class MappingError(BridgeError):
    """A mapping file is invalid. ``source`` names the file, ``path`` the location in it."""

    def __init__(self, message: str, *, source: str = "", path: str = "") -> None:
        self.source = source
        self.path = path
        where = ":".join(p for p in (source, path) if p)
        super().__init__(f"{where}: {message}" if where else message)


class HL7Error(BridgeError):
    """Inbound HL7 could not be accepted.

    ``code`` is the HL7 table 0357 error code (e.g. 100 segment sequence,
    101 required field missing, 102 data type error, 200 unsupported message
    type, 203 unsupported version, 207 application internal error).
    ``location`` is the ERR-2 error location as (segment id, sequence, field),
    for example ``("MSH", 1, 9)``.
    """

    default_code = 207

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        location: tuple[str, int, int] | None = None,
    ) -> None:
        self.code = code if code is not None else self.default_code
        self.location = location
        super().__init__(message)


class FramingError(HL7Error):
    """MLLP framing was violated: bytes outside a frame, or a frame over the size limit."""

    default_code = 100


class ParseError(HL7Error):
    """The payload is not readable HL7 v2: no MSH, bad delimiters, undecodable bytes."""

    default_code = 100


class ValidationError(HL7Error):
    """Strict validation against the declared HL7 version found problems."""

    default_code = 102


class FhirError(BridgeError):
    """A FHIR request could not be accepted or completed.

    ``status`` is the HTTP status to answer with (400, 401, 413, 415, 422, ...);
    ``issue_code`` the OperationOutcome ``issue.code`` (``invalid``, ``structure``,
    ``security``, ``not-supported``, ``too-long``, ``not-found``, ``transient``, ...).
    The message must name the problem without quoting resource content.
    """

    def __init__(self, message: str, *, status: int = 400, issue_code: str = "invalid") -> None:
        self.status = status
        self.issue_code = issue_code
        super().__init__(message)


class OffBaseReference(FhirError):
    """A reference that points outside the configured FHIR base: never fetched."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=422, issue_code="security")


class FetchError(FhirError):
    """Reading from the FHIR server failed. ``transient`` when a later try may succeed."""

    def __init__(self, message: str, *, transient: bool = True, status: int = 502) -> None:
        self.transient = transient
        super().__init__(message, status=status, issue_code="transient" if transient else "processing")


class StoreError(BridgeError):
    """The durable store failed. The message was not committed and must not be ACKed."""


class DeliveryError(BridgeError):
    """Raised by an outbound adapter's ``send``; the delivery worker decides what follows."""


class Retryable(DeliveryError):
    """A transient failure. ``defer`` (seconds) is the earliest retry, e.g. from ``Retry-After``."""

    def __init__(self, message: str, *, defer: float | None = None) -> None:
        self.defer = defer
        super().__init__(message)


class Permanent(DeliveryError):
    """Retrying cannot help (bad token, unknown channel, 4xx). ``disable_channel`` stops the channel."""

    def __init__(self, message: str, *, disable_channel: bool = False) -> None:
        self.disable_channel = disable_channel
        super().__init__(message)
