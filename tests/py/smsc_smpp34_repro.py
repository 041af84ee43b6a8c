"""Reproducer of two SMPP protocol deviations of the smpp34 1.5.0 Server (not used by the
tests; evidence for the upstream report and for the tolerances in tests/esme_interop.rs).
A raw-socket ESME written here talks to smpp34's Server directly, no proxy in between.

1. unbind: the Server closes the TCP connection without sending unbind_resp
   (SMPP v3.4 section 4.2: the receiver of an unbind must answer unbind_resp).
2. bind_receiver: the ESME's deliver_sm_resp is answered with generic_nack
   ESME_RINVCMDID (0x00000003), and the Server's `Esme.deliver_sm(...)` call never resolves
   (a receiver must answer deliver_sm; on a transceiver the same octets are accepted).

    python3 tests/py/smsc_smpp34_repro.py      # prints what was observed, exit 0 either way
"""

import asyncio
import os
import socket
import sys
import struct

import smpp34


def pdu(cid, seq, body=b"", status=0):
    return struct.pack(">IIII", 16 + len(body), cid, status, seq) + body


async def read_pdu(reader, timeout=2.0):
    """(command_id, status, seq, body), or None on EOF / timeout."""
    try:
        head = await asyncio.wait_for(reader.readexactly(16), timeout)
        length, cid, status, seq = struct.unpack(">IIII", head)
        body = await asyncio.wait_for(reader.readexactly(length - 16), timeout)
        return cid, status, seq, body
    except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
        return None


BIND_BODY = b"repro\0pw\0\0\x34\0\0\0"


async def main():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    srv = smpp34.Server("127.0.0.1", port)
    await srv.start()
    sessions = asyncio.Queue()

    async def serve():
        while True:
            ev = await srv.next()
            if isinstance(ev, smpp34.Esme):
                await sessions.put(ev)

    serving = asyncio.ensure_future(serve())

    # 1. unbind on a transceiver
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(pdu(0x00000009, 1, BIND_BODY))
    print("bind_transceiver ->", await read_pdu(r))
    await sessions.get()
    w.write(pdu(0x00000006, 2))
    answer = await read_pdu(r)
    print("unbind ->", "connection closed, no unbind_resp" if answer is None else answer)
    w.close()

    # 2. deliver_sm_resp on a receiver
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(pdu(0x00000001, 1, BIND_BODY))
    print("bind_receiver ->", await read_pdu(r))
    esme = await sessions.get()
    call = asyncio.ensure_future(esme.deliver_sm("123", b"id:1 stat:DELIVRD", esm_class=4))
    dlr = await read_pdu(r)
    print("server sent ->", dlr and (hex(dlr[0]), dlr[2]))
    w.write(pdu(0x80000005, dlr[2], b"\0"))  # deliver_sm_resp, ESME_ROK, empty message_id
    answer = await read_pdu(r, timeout=1.0)
    print("deliver_sm_resp ->", answer and (hex(answer[0]), hex(answer[1]), answer[2]))
    try:
        resp = await asyncio.wait_for(call, 3)
        print("Esme.deliver_sm returned status", resp.command_status)
    except asyncio.TimeoutError:
        print("Esme.deliver_sm did not return within 3 s")
    w.close()

    # 3. control: the same deliver_sm_resp octets on a transceiver
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(pdu(0x00000009, 1, BIND_BODY))
    print("bind_transceiver ->", await read_pdu(r))
    esme = await sessions.get()
    call = asyncio.ensure_future(esme.deliver_sm("123", b"id:1 stat:DELIVRD", esm_class=4))
    dlr = await read_pdu(r)
    w.write(pdu(0x80000005, dlr[2], b"\0"))
    try:
        resp = await asyncio.wait_for(call, 3)
        print("control (transceiver): Esme.deliver_sm returned status", resp.command_status)
    except asyncio.TimeoutError:
        print("control (transceiver): Esme.deliver_sm did not return within 3 s")
    w.close()
    serving.cancel()


asyncio.run(main())
sys.stdout.flush()
os._exit(0)  # smpp34 may crash in interpreter finalisation (smsc_smpp34_exit_crash.py)
