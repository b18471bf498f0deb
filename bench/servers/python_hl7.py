"""Baseline: python-hl7's asyncio MLLP server, parsing each message with ``hl7.parse`` and answering ``create_ack``.

This is the server its documentation shows (``hl7.mllp.start_hl7_server``): each
connection reads one message at a time, parses it whole, and writes the ACK.
Nothing is stored.
"""

from __future__ import annotations

import asyncio
import json

import hl7
from hl7.mllp import HL7StreamReader, HL7StreamWriter, InvalidBlockError, start_hl7_server

from bench.servers.runner import bind, run_loop


async def _serve(reader: HL7StreamReader, writer: HL7StreamWriter) -> None:
    try:
        while not writer.is_closing():
            message: hl7.Message = await reader.readmessage()
            writer.writemessage(message.create_ack())
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, InvalidBlockError):
        pass
    finally:
        writer.close()


async def _main() -> None:
    sock = bind()
    server = await start_hl7_server(_serve, sock=sock, encoding="utf-8", encoding_errors="replace")
    print(json.dumps({"port": sock.getsockname()[1]}), flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    run_loop(_main())
