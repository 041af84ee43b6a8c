"""Drives `smsgw smsc-sim` with smpplib (an SMPP client we did not write).

Usage: smpplib_client.py HOST PORT SYSTEM_ID PASSWORD
Binds as transceiver, sends one GSM 7-bit message and one multipart UCS2 message (split by
smpplib itself, UDH concatenation), collects the submit_sm_resp ids and the delivery receipts,
sends enquire_link, unbinds. Prints one JSON object on stdout; exit 77 if smpplib is missing.
"""

import json
import sys
import time

try:
    import smpplib.client
    import smpplib.consts
    import smpplib.gsm
    import smpplib.smpp
except ImportError as e:  # only a missing package is a skip; everything else must fail
    print(f"SKIP smpplib not importable: {e}")
    sys.exit(77)


def main():
    host, port, system_id, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    client = smpplib.client.Client(host, port, timeout=1)
    resp_ids = []
    receipts = []

    def sent(pdu, **_):
        mid = pdu.message_id
        resp_ids.append(mid.decode() if isinstance(mid, bytes) else mid)

    def received(pdu, **_):
        rid = getattr(pdu, "receipted_message_id", None)
        if isinstance(rid, bytes):
            rid = rid.decode()
        sm = pdu.short_message
        receipts.append(
            {
                "esm_class": pdu.esm_class,
                "receipted_message_id": rid,
                "message_state": getattr(pdu, "message_state", None),
                "text": sm.decode("latin-1") if isinstance(sm, bytes) else sm,
            }
        )

    client.set_message_sent_handler(sent)
    client.set_message_received_handler(received)
    client.connect()
    client.bind_transceiver(system_id=system_id, password=password)

    submitted = 0
    gsm_parts, gsm_enc, gsm_esm = smpplib.gsm.make_parts("Hello from smpplib, 1 part")
    ucs_text = "Привет, мир! Это длинное сообщение. " * 5  # 180 chars, needs UCS2, 3 parts
    ucs_parts, ucs_enc, ucs_esm = smpplib.gsm.make_parts(ucs_text)
    for parts, enc, esm, dest in (
        (gsm_parts, gsm_enc, gsm_esm, "4790000001"),
        (ucs_parts, ucs_enc, ucs_esm, "4790000002"),
    ):
        for part in parts:
            client.send_message(
                source_addr_ton=smpplib.consts.SMPP_TON_INTL,
                source_addr="12345",
                dest_addr_ton=smpplib.consts.SMPP_TON_INTL,
                destination_addr=dest,
                short_message=part,
                data_coding=enc,
                esm_class=esm,
                registered_delivery=1,
            )
            submitted += 1

    deadline = time.time() + 15
    while (len(resp_ids) < submitted or len(receipts) < submitted) and time.time() < deadline:
        client.read_once()

    # enquire_link, answered by the simulator (read the answer ourselves to see it).
    client.send_pdu(smpplib.smpp.make_pdu("enquire_link", client=client))
    enquire_resp = None
    deadline = time.time() + 5
    while enquire_resp is None and time.time() < deadline:
        try:
            p = client.read_pdu()
        except Exception:  # socket timeout: keep waiting until the deadline
            continue
        if p.command == "enquire_link_resp":
            enquire_resp = p.command
        elif p.command == "deliver_sm":
            client._message_received(p)

    unbind = client.unbind()
    client.disconnect()
    print(
        json.dumps(
            {
                "submitted": submitted,
                "gsm_parts": len(gsm_parts),
                "ucs_parts": len(ucs_parts),
                "ucs_data_coding": ucs_enc,
                "ucs_esm_class": ucs_esm,
                "resp_ids": resp_ids,
                "receipts": receipts,
                "enquire_link": enquire_resp,
                "unbind": unbind.command,
                "unbind_status": unbind.status,
            }
        )
    )


if __name__ == "__main__":
    main()
