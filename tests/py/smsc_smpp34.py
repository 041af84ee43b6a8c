"""An SMSC built on the smpp34 package's asyncio server (an SMPP stack we did not write), for
`tests/esme_interop.rs`: our ESME (src/smpp/io.rs) binds to it, submits, receives receipts.

Usage: smsc_smpp34.py [MAX_SECONDS]

Everything goes to stdout as JSON lines (one object per line, key "ev"):
  ready     {"port": P, ...}  listening; connect the ESME to 127.0.0.1:P
  bind      an ESME bound (session, system_id, can_receive)
  submit    a submit_sm as smpp34 decoded it, the id we accepted it with, the UDH and text as
            decoded HERE (independently of the Rust code under test)
  receipt   a deliver_sm receipt about to be sent for a submit (id, style, state)
  receipt_resp  smpp34's deliver_sm call for it returned (resp_status) or failed (error)
  unbound   smpp34 reported the session ended
  wire      one PDU header seen on the connection (see "tap" below)
  tcp_close one side of a tapped connection closed
  error     something in this script failed (the Rust test fails on it)
Exit 77 with "SKIP ..." if smpp34 is not importable.

The tap: smpp34's Server exposes bound sessions, submits and session ends, but not
enquire_link, unbind or their answers (its core handles those). So the ESME connects to a
byte-for-byte forwarding proxy in this script that reports every PDU header in both
directions; the SMPP answers all still come from smpp34. The proxy also tells us the real
listening port (asyncio binds port 0), while smpp34's own port is probed (see `free_port`).

Message ids: submit_sm_resp carries 10 upper-case hex digits with leading zeros
("00A1B2C301"). Receipts rotate three styles, a pattern seen from real SMSCs:
  0 "tlv+text": receipted_message_id in lower-case hex without leading zeros + message_state
                TLV, text form with the id in DECIMAL
  1 "text":     text form only, id in decimal
  2 "tlv":      TLVs only, empty short_message
Every 4th receipt is UNDELIV (message_state 5, err:012); the others DELIVRD.

Receipts go to the submitting session if it can receive (transceiver), else to another bound
session of the same system_id that can (the receiver of a transmitter+receiver pair).

The script exits on stdin EOF (the Rust test closes it, or dies) or after MAX_SECONDS
(default 60), so it never outlives its test.
"""

import asyncio
import json
import os
import socket
import struct
import sys
import threading
import time

try:
    import smpp34
except ImportError as e:  # only a missing package is a skip; everything else must fail
    print(f"SKIP smpp34 not importable: {e}", flush=True)
    sys.exit(77)


def emit(obj):
    print(json.dumps(obj, sort_keys=True), flush=True)


# GSM 03.38 default alphabet and extension table (3GPP TS 23.038 6.2.1), typed from the spec
# for this script so the check does not share a table with the Rust code under test.
GSM_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
assert len(GSM_BASIC) == 128
GSM_EXT = {0x0A: "\f", 0x14: "^", 0x28: "{", 0x29: "}", 0x2F: "\\", 0x3C: "[", 0x3D: "~",
           0x3E: "]", 0x40: "|", 0x65: "€"}


def decode_gsm7_unpacked(b):
    out, i = [], 0
    while i < len(b):
        c = b[i]
        if c == 0x1B and i + 1 < len(b):
            out.append(GSM_EXT.get(b[i + 1], "?"))
            i += 2
            continue
        out.append(GSM_BASIC[c] if c < 128 else "?")
        i += 1
    return "".join(out)


def parse_udh(sm):
    """(udh_length_including_udhl, {"ref","total","seq","iei"} or None)."""
    if not sm:
        return 0, None
    n = 1 + sm[0]
    body, i, concat = sm[1:n], 0, None
    while i + 2 <= len(body):
        iei, ln = body[i], body[i + 1]
        v = body[i + 2 : i + 2 + ln]
        if iei == 0x00 and ln == 3:
            concat = {"iei": 0, "ref": v[0], "total": v[1], "seq": v[2]}
        elif iei == 0x08 and ln == 4:
            concat = {"iei": 8, "ref": (v[0] << 8) | v[1], "total": v[2], "seq": v[3]}
        i += 2 + ln
    return n, concat


def decode_text(data_coding, b):
    if data_coding == 0:
        return decode_gsm7_unpacked(b)
    if data_coding == 8:
        return b.decode("utf-16-be", errors="replace")
    if data_coding in (1, 3):
        return b.decode("latin-1")
    return None


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---- the tap -------------------------------------------------------------------------------

CMD_NAMES = {
    0x00000001: "bind_receiver", 0x00000002: "bind_transmitter", 0x00000009: "bind_transceiver",
    0x00000004: "submit_sm", 0x00000005: "deliver_sm", 0x00000006: "unbind",
    0x00000015: "enquire_link", 0x00000000: "generic_nack", 0x00000103: "data_sm",
}


def cmd_name(cid):
    base = CMD_NAMES.get(cid & 0x7FFFFFFF, f"0x{cid & 0x7FFFFFFF:08x}")
    return base + ("_resp" if cid & 0x80000000 and cid != 0x80000000 else "")


async def pump(conn, direction, reader, writer):
    buf = b""
    try:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            buf += chunk
            while len(buf) >= 16:
                length, cid, status, seq = struct.unpack(">IIII", buf[:16])
                if length < 16 or length > 1 << 20:
                    emit({"ev": "error", "what": f"tap: bad command_length {length} {direction}"})
                    buf = b""
                    break
                if len(buf) < length:
                    break
                emit({"ev": "wire", "conn": conn, "dir": direction, "cmd": cmd_name(cid),
                      "status": status, "seq": seq, "t": time.monotonic()})
                buf = buf[length:]
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        emit({"ev": "tcp_close", "conn": conn, "by": direction.split(">")[0]})
        try:
            writer.close()
        except Exception:
            pass


async def start_tap(smsc_port):
    counter = [0]

    async def on_conn(esme_r, esme_w):
        counter[0] += 1
        conn = counter[0]
        try:
            smsc_r, smsc_w = await asyncio.open_connection("127.0.0.1", smsc_port)
        except OSError as e:
            emit({"ev": "error", "what": f"tap: cannot reach smpp34 server: {e}"})
            esme_w.close()
            return
        emit({"ev": "tcp_open", "conn": conn})
        await asyncio.gather(pump(conn, "esme>smsc", esme_r, smsc_w),
                             pump(conn, "smsc>esme", smsc_r, esme_w))

    return await asyncio.start_server(on_conn, "127.0.0.1", 0)


# ---- the SMSC ------------------------------------------------------------------------------

ID_BASE = 0x00A1B2C300


class Smsc:
    def __init__(self):
        self.sessions = {}  # session_id -> Esme
        self.next_id = 1
        self.receipts_sent = 0
        self.tasks = set()

    def receiver_for(self, session_id):
        esme = self.sessions.get(session_id)
        if esme is not None and esme.can_receive:
            return session_id, esme
        sys_id = esme.system_id if esme is not None else None
        for sid, e in self.sessions.items():
            if e.can_receive and (sys_id is None or e.system_id == sys_id):
                return sid, e
        return None, None

    async def send_receipt(self, ev_fields, msg_id):
        k = self.receipts_sent
        self.receipts_sent += 1
        style = ("tlv+text", "text", "tlv")[k % 3]
        undeliv = k % 4 == 3
        stat, state, err = ("UNDELIV", 5, 12) if undeliv else ("DELIVRD", 2, 0)
        numeric = int(msg_id, 16)
        now = time.strftime("%y%m%d%H%M")
        snippet = "".join(c if 32 <= ord(c) < 127 else "?" for c in (ev_fields["text"] or ""))[:20]
        text = (f"id:{numeric} sub:001 dlvrd:{0 if undeliv else 1:03d} submit date:{now} "
                f"done date:{now} stat:{stat} err:{err:03d} text:{snippet}")
        tlvs, short = [], b""
        if style in ("tlv+text", "tlv"):
            tlvs = [smpp34.Tlv(smpp34.TLV_RECEIPTED_MESSAGE_ID, f"{numeric:x}".encode() + b"\0"),
                    smpp34.Tlv(smpp34.TLV_MESSAGE_STATE, bytes([state]))]
        if style in ("tlv+text", "text"):
            short = text.encode("ascii")
        await asyncio.sleep(0.05)
        # Wait (bounded) for a session that can receive, e.g. the receiver of a TX+RX pair.
        target, esme = None, None
        for _ in range(100):
            target, esme = self.receiver_for(ev_fields["session"])
            if esme is not None:
                break
            await asyncio.sleep(0.05)
        if esme is None:
            emit({"ev": "error", "what": f"no bound session can receive the receipt of {msg_id}"})
            return
        # Recorded before sending, so the test can check the receipt as soon as it arrives;
        # the answer smpp34 saw follows as "receipt_resp".
        emit({"ev": "receipt", "for": msg_id, "style": style, "stat": stat,
              "message_state": state, "err": err, "session": target,
              "submit_session": ev_fields["session"], "text": short.decode("ascii")})
        record = {"ev": "receipt_resp", "for": msg_id}
        try:
            resp = await asyncio.wait_for(
                esme.deliver_sm(ev_fields["source_addr"], short,
                                source_addr=ev_fields["destination_addr"], esm_class=0x04,
                                source_addr_ton=1, source_addr_npi=1, tlvs=tlvs),
                timeout=5)
            record["resp_status"] = resp.command_status
        except Exception as e:  # recorded; the test decides
            record["error"] = f"{type(e).__name__}: {e}"
        emit(record)

    def on_submit(self, ev):
        msg_id = f"{ID_BASE + self.next_id:010X}"
        self.next_id += 1
        sm = ev.short_message
        udh_len, concat = parse_udh(sm) if ev.esm_class & 0x40 else (0, None)
        text = decode_text(ev.data_coding, sm[udh_len:])
        fields = {
            "ev": "submit", "session": ev.session_id, "message_id": msg_id,
            "source_addr": ev.source_addr, "destination_addr": ev.destination_addr,
            "esm_class": ev.esm_class, "data_coding": ev.data_coding,
            "registered_delivery": ev.registered_delivery, "sm_hex": sm.hex(),
            "tlvs": [[t.tag, t.value.hex()] for t in ev.tlvs], "udh": concat, "text": text,
        }
        ev.accept(msg_id)
        emit(fields)
        if ev.registered_delivery & 0x01:
            t = asyncio.get_running_loop().create_task(self.send_receipt(fields, msg_id))
            self.tasks.add(t)
            t.add_done_callback(self.tasks.discard)

    async def serve(self, srv):
        while True:
            ev = await srv.next()
            if isinstance(ev, smpp34.Esme):
                self.sessions[ev.session_id] = ev
                emit({"ev": "bind", "session": ev.session_id, "system_id": ev.system_id,
                      "can_receive": ev.can_receive})
            elif isinstance(ev, smpp34.SubmitSmEvent):
                self.on_submit(ev)
            elif isinstance(ev, smpp34.Unbound):
                self.sessions.pop(ev.session_id, None)
                emit({"ev": "unbound", "session": ev.session_id})
            else:
                emit({"ev": "error", "what": f"unexpected server event {ev!r}"})


async def main():
    max_seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def watch_stdin():
        sys.stdin.read()  # returns at EOF: the test is done (or gone)
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True).start()

    # smpp34's Server takes a fixed port and cannot report the one the OS chose for port 0,
    # so probe a free one; another process may take it in between, hence the retries.
    srv, smsc_port, last_err = None, None, None
    for _ in range(5):
        smsc_port = free_port()
        srv = smpp34.Server("127.0.0.1", smsc_port, system_id="smpp34smsc")
        try:
            await srv.start()
            break
        except smpp34.SmppError as e:
            last_err, srv = e, None
    if srv is None:
        emit({"ev": "error", "what": f"smpp34 server did not start: {last_err}"})
        return 1
    tap = await start_tap(smsc_port)
    port = tap.sockets[0].getsockname()[1]
    emit({"ev": "ready", "port": port, "smsc_port": smsc_port, "smpp34": smpp34.__version__})

    smsc = Smsc()
    serve = loop.create_task(smsc.serve(srv))
    stopper = loop.create_task(stop.wait())
    done, _ = await asyncio.wait({serve, stopper}, timeout=max_seconds,
                                 return_when=asyncio.FIRST_COMPLETED)
    if serve in done and serve.exception() is not None:
        emit({"ev": "error", "what": f"server loop failed: {serve.exception()!r}"})
    if not done:
        emit({"ev": "error", "what": f"gave up after {max_seconds} s"})
    serve.cancel()
    stopper.cancel()
    tap.close()
    try:
        await asyncio.wait_for(srv.stop(), timeout=2)
    except Exception:
        pass
    emit({"ev": "exit"})
    return 0


if __name__ == "__main__":
    rc = asyncio.run(main())
    sys.stdout.flush()
    # os._exit, not sys.exit: smpp34 1.5.0 crashes in interpreter finalisation (SIGSEGV or
    # "Fatal Python error: PyGILState_Release") when a Server.next() future was cancelled,
    # as it always is here; see smsc_smpp34_exit_crash.py. Everything is written by now.
    os._exit(rc)
