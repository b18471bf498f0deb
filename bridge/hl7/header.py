"""MSH checks every receiver applies before accepting a message, in lenient mode too.

A message whose control ID is empty cannot be acknowledged meaningfully
(MSA-2 would correlate nothing), and one whose MSH-9, MSH-11 or MSH-12 is
unusable is, per table 0008, an application reject (AR): the sender must not
expect a different answer by resending it. These are cheap string checks on
fields the reader already split; structure validation is ``validation.py``'s.
"""

from __future__ import annotations

import re

from bridge.errors import ValidationError
from bridge.hl7.reader import Message

__all__ = ["REJECT_CODES", "check_header"]

#: 0357 codes that mean "MSH-9, MSH-11 or MSH-12 unacceptable": answered AR/CR rather than AE/CE.
REJECT_CODES = frozenset({200, 201, 202, 203})

_MESSAGE_CODE = re.compile(r"[A-Z0-9]{3}")
_TRIGGER = re.compile(r"[A-Z0-9]{1,3}")
# HL7 v2.1 through v2.9, with an optional release part (2.3.1, 2.5.1, 2.8.2).
_VERSION = re.compile(r"2\.[1-9](\.[0-9]{1,2})?")
#: Table 0103 processing IDs: production, debugging, training.
_PROCESSING_IDS = frozenset({"P", "D", "T"})


def check_header(message: Message) -> None:
    """Raise ValidationError with the 0357 code and MSH location of the first unusable header field."""
    if not message.control_id.strip():
        raise ValidationError("MSH-10 message control ID is empty", code=101, location=("MSH", 1, 10))
    if not _MESSAGE_CODE.fullmatch(message.message_code):
        raise ValidationError("MSH-9.1 is not a message type", code=200, location=("MSH", 1, 9))
    if message.trigger and not _TRIGGER.fullmatch(message.trigger):
        raise ValidationError("MSH-9.2 is not a trigger event", code=201, location=("MSH", 1, 9))
    if message.processing_id not in _PROCESSING_IDS:
        raise ValidationError("MSH-11 processing ID is not P, D or T", code=202, location=("MSH", 1, 11))
    if not _VERSION.fullmatch(message.version):
        raise ValidationError("MSH-12 is not an HL7 v2 version", code=203, location=("MSH", 1, 12))
