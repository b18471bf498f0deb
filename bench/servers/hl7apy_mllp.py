"""Baseline: hl7apy's ``MLLPServer`` with a handler that parses the message and answers an ACK built with hl7apy.

hl7apy's request handler reads one frame, writes the handler's reply, and closes the
connection: one message per connection. Senders that keep a connection open (every
real one) get no ACK for their second message. The load generator therefore connects
once per message against this server, and the run reports the limit as a finding.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time

from hl7apy.core import Message
from hl7apy.mllp import AbstractErrorHandler, AbstractHandler, MLLPServer
from hl7apy.parser import parse_message

_COUNTER = iter(range(1, 1 << 62))
_COUNTER_LOCK = threading.Lock()


def _control_id() -> str:
    with _COUNTER_LOCK:
        return f"APY{next(_COUNTER)}"


class _AckHandler(AbstractHandler):  # type: ignore[misc]
    def reply(self) -> str:
        incoming = parse_message(self.incoming_message, find_groups=False)
        msh = incoming.msh
        ack = Message("ACK", version=msh.msh_12.value.split("^")[0] or "2.5")
        ack.msh.msh_3 = msh.msh_5.value
        ack.msh.msh_4 = msh.msh_6.value
        ack.msh.msh_5 = msh.msh_3.value
        ack.msh.msh_6 = msh.msh_4.value
        ack.msh.msh_9 = "ACK"
        ack.msh.msh_10 = _control_id()
        ack.msh.msh_11 = "P"
        ack.msa.msa_1 = "AA"
        ack.msa.msa_2 = msh.msh_10.value
        reply: str = ack.to_mllp()
        return reply


class _ErrorHandler(AbstractErrorHandler):  # type: ignore[misc]
    """hl7apy could not parse the message: answer AE, as a careful user of it would."""

    def reply(self) -> str:
        stamp = time.strftime("%Y%m%d%H%M%S")
        return f"\x0bMSH|^~\\&|HL7APY|BENCH|||{stamp}||ACK|{_control_id()}|P|2.5\rMSA|AE|\r\x1c\r"


class _AnyType(dict[str, tuple[type, ...]]):
    """The handlers table: MSH-9 is the key, and every message type gets the ACK handler."""

    def __missing__(self, key: str) -> tuple[type, ...]:
        return (_AckHandler,)


def main() -> None:
    server = MLLPServer("127.0.0.1", 0, _AnyType(ERR=(_ErrorHandler,)), timeout=10)
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
