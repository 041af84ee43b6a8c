#!/usr/bin/env python3
"""gRPC conformance client for smsgw, written against proto/ with the reference gRPC stack
(grpcio + grpcio-tools), which shares no code with the gateway's tonic server.

Stubs are generated from proto/ at run time into a temporary directory. tests/grpc.rs starts
the real gateway and simulator and runs this script:

  grpc_client.py --addr 127.0.0.1:P --secret S --case api      # every unary case
  grpc_client.py --addr 127.0.0.1:P --secret S --case stream --n 500

Prints `PASS <case>` per check and a final `RESULT <json>` line; exits 1 on the first failure.
Every RPC has a deadline, every wait loop a time bound.
"""

import argparse
import json
import os
import sys
import tempfile
import time

try:
    import grpc
    from grpc_tools import protoc
except ImportError as e:
    # Exit code 77 + SKIP: the Rust test reports SKIPPED instead of failing (CI installs both).
    print("SKIP grpcio/grpcio-tools not importable: %s" % e, flush=True)
    sys.exit(77)

RPC_TIMEOUT_S = 10.0


def generate_stubs(proto_dir, out_dir):
    # grpc_tools bundles protoc and the well-known types: nothing from the system is needed.
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    args = [
        "protoc",
        "-I" + proto_dir,
        "-I" + well_known,
        "--python_out=" + out_dir,
        "--grpc_python_out=" + out_dir,
        "sms/v1/sms.proto",
        "auth/auth.proto",
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise SystemExit("protoc failed with %d" % rc)
    sys.path.insert(0, out_dir)


def fail(msg):
    print("FAIL " + msg, flush=True)
    sys.exit(1)


def check(cond, name, detail=""):
    if not cond:
        fail("%s %s" % (name, detail))
    print("PASS " + name, flush=True)


def expect_error(name, code, prefix, fn):
    """Runs fn(); it must raise an RpcError with `code` whose message starts with `prefix:`."""
    try:
        r = fn()
    except grpc.RpcError as e:
        ok = e.code() == code and e.details().startswith(prefix + ":")
        check(ok, name, "got %s %r" % (e.code(), e.details()))
        return e
    fail("%s: expected %s, got a success: %r" % (name, code, r))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--app", type=int, default=1)
    ap.add_argument("--other-app", type=int, default=2)
    ap.add_argument("--case", choices=["api", "stream"], required=True)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--proto", default=os.path.join(os.path.dirname(__file__), "..", "..", "proto"))
    a = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="smsgw-grpc-stubs-")
    generate_stubs(os.path.abspath(a.proto), tmp)
    from sms.v1 import sms_pb2, sms_pb2_grpc  # noqa: E402
    from auth import auth_pb2, auth_pb2_grpc  # noqa: E402

    channel = grpc.insecure_channel(a.addr)
    grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT_S)
    sms = sms_pb2_grpc.SmsServiceStub(channel)
    auth = auth_pb2_grpc.AuthStub(channel)
    T = RPC_TIMEOUT_S

    # Auth.Login, then its token is what every other call uses.
    login = auth.Login(auth_pb2.LoginRequest(app_id=a.app, secret=a.secret), timeout=T)
    check(login.token.count(".") == 2 and login.app_id == a.app and login.expires_in > 0,
          "login", repr(login))
    md = [("authorization", "Bearer " + login.token), ("app_id", str(a.app))]

    # Wait until both links are bound and healthy (CheckESME, all links).
    deadline = time.time() + 20
    while True:
        r = sms.CheckESME(sms_pb2.CheckESMERequest(esme=0), metadata=md, timeout=T)
        if all(l.state == "connected" for l in r.links) and len(r.links) >= 2:
            break
        if time.time() > deadline:
            fail("links not connected within 20 s: %r" % r)
        time.sleep(0.1)
    print("PASS check_esme_all", flush=True)

    if a.case == "stream":
        run_stream(a, sms, sms_pb2, md)
    else:
        run_api(a, sms, sms_pb2, auth, auth_pb2, md)


def run_api(a, sms, sms_pb2, auth, auth_pb2, md):
    T = RPC_TIMEOUT_S
    SC = grpc.StatusCode

    def req(**kw):
        base = dict(esme=100, saddr="Test", daddr="+4915100000001", message="hello grpc")
        base.update(kw)
        return sms_pb2.SmsRequest(**base)

    expect_error("login_wrong_secret", SC.UNAUTHENTICATED, "invalid_credentials",
                 lambda: auth.Login(auth_pb2.LoginRequest(app_id=a.app, secret="nope"), timeout=T))
    expect_error("login_bad_app_id", SC.INVALID_ARGUMENT, "invalid_field",
                 lambda: auth.Login(auth_pb2.LoginRequest(app_id=-1, secret="x"), timeout=T))

    # SendMessage accepted, then GetStatus reaches delivered (the simulator sends receipts).
    r = sms.SendMessage(req(task_id=42, transaction_id="grpc-ok-1", sent_at=123), metadata=md,
                        timeout=T)
    check(r.success and r.transaction_id == "grpc-ok-1" and r.task_id == 42 and r.sent_at == 123
          and r.parts == 1 and r.status == "submitted" and len(r.message_ids) == 1
          and r.link == 100, "send_message_ok", repr(r))
    deadline = time.time() + 15
    while True:
        s = sms.GetStatus(sms_pb2.GetStatusRequest(transaction_id="grpc-ok-1"), metadata=md,
                          timeout=T)
        if s.status == "delivered":
            break
        if time.time() > deadline:
            fail("get_status_delivered: still %r" % s)
        time.sleep(0.1)
    check(len(s.parts) == 1 and s.parts[0].message_id == r.message_ids[0]
          and s.parts[0].HasField("receipt") and s.parts[0].receipt.status == "delivered"
          and s.app_id == a.app and s.destination == "+4915100000001",
          "get_status_delivered", repr(s))

    # The same transaction_id again: nothing re-sent, answered from the record.
    r2 = sms.SendMessage(req(transaction_id="grpc-ok-1"), metadata=md, timeout=T)
    check(r2.success and r2.duplicate and r2.message_ids == r.message_ids, "send_idempotent",
          repr(r2))

    # Reference defaults: ton/npi unset or explicit are both accepted; out of range is not.
    r3 = sms.SendMessage(req(ston=5, snpi=0, dton=1, dnpi=1), metadata=md, timeout=T)
    check(r3.success, "send_explicit_ton_npi", repr(r3))
    expect_error("send_ton_out_of_range", SC.INVALID_ARGUMENT, "invalid_field",
                 lambda: sms.SendMessage(req(dton=300), metadata=md, timeout=T))

    # Authentication failures.
    expect_error("missing_token", SC.UNAUTHENTICATED, "missing_authorization",
                 lambda: sms.SendMessage(req(), metadata=[("app_id", str(a.app))], timeout=T))
    # Authentication comes before the input is looked at (as REST reads no body before it).
    expect_error("auth_before_input", SC.UNAUTHENTICATED, "missing_authorization",
                 lambda: sms.SendMessage(req(esme=0, dton=999), metadata=[("app_id", "1")],
                                         timeout=T))
    expect_error("invalid_token", SC.UNAUTHENTICATED, "invalid_token",
                 lambda: sms.SendMessage(req(), metadata=[("authorization", "Bearer x.y.z"),
                                                          ("app_id", str(a.app))], timeout=T))
    expect_error("missing_app_id", SC.UNAUTHENTICATED, "missing_app_id",
                 lambda: sms.SendMessage(req(), metadata=md[:1], timeout=T))
    # The body's app_id stands in for missing metadata (reference clients send it there).
    r4 = sms.SendMessage(req(app_id=a.app), metadata=md[:1], timeout=T)
    check(r4.success, "app_id_from_body", repr(r4))
    # Wrong app: the token is for another app than app_id -> app_id_mismatch (UNAUTHENTICATED
    # per the shared mapping), whether the metadata or the body names it.
    expect_error("wrong_app_metadata", SC.UNAUTHENTICATED, "app_id_mismatch",
                 lambda: sms.SendMessage(req(), metadata=[md[0], ("app_id", str(a.other_app))],
                                         timeout=T))
    expect_error("wrong_app_body", SC.UNAUTHENTICATED, "app_id_mismatch",
                 lambda: sms.SendMessage(req(app_id=a.other_app), metadata=md, timeout=T))
    # An authenticated app sending through a link it may not use: PERMISSION_DENIED.
    other = auth.Login(auth_pb2.LoginRequest(app_id=a.other_app, password=a.secret), timeout=T)
    md_other = [("authorization", "Bearer " + other.token), ("app_id", str(a.other_app))]
    expect_error("esme_not_allowed", SC.PERMISSION_DENIED, "esme_not_allowed",
                 lambda: sms.SendMessage(req(esme=101), metadata=md_other, timeout=T))

    # Bad input.
    expect_error("invalid_daddr", SC.INVALID_ARGUMENT, "invalid_address",
                 lambda: sms.SendMessage(req(daddr="not-a-number"), metadata=md, timeout=T))
    expect_error("esme_zero", SC.INVALID_ARGUMENT, "invalid_field",
                 lambda: sms.SendMessage(req(esme=0), metadata=md, timeout=T))
    expect_error("empty_message", SC.INVALID_ARGUMENT, "empty_message",
                 lambda: sms.SendMessage(req(message=""), metadata=md, timeout=T))
    expect_error("unknown_esme", SC.NOT_FOUND, "unknown_esme",
                 lambda: sms.SendMessage(req(esme=999), metadata=md, timeout=T))
    try:
        sms.SendMessage(req(message="x" * (100 * 1024)), metadata=md, timeout=T)
        fail("oversize: accepted")
    except grpc.RpcError as e:
        check(e.code() == SC.OUT_OF_RANGE, "oversize_message",
              "got %s %r" % (e.code(), e.details()))

    # Over the link's rate (link 101: 1 msg/s, burst 1): RESOURCE_EXHAUSTED with retry-after.
    limited = None
    for i in range(5):
        try:
            sms.SendMessage(req(esme=101, daddr="+49151000002%02d" % i), metadata=md, timeout=T)
        except grpc.RpcError as e:
            limited = e
            break
    check(limited is not None and limited.code() == SC.RESOURCE_EXHAUSTED
          and limited.details().startswith("rate_limited:")
          and any(k == "retry-after" for k, _ in limited.trailing_metadata()),
          "rate_limited", repr(limited and (limited.code(), limited.details())))

    # Unknown transaction.
    expect_error("unknown_transaction", SC.NOT_FOUND, "unknown_transaction",
                 lambda: sms.GetStatus(sms_pb2.GetStatusRequest(transaction_id="no-such-tx"),
                                       metadata=md, timeout=T))
    expect_error("get_status_other_app", SC.NOT_FOUND, "unknown_transaction",
                 lambda: sms.GetStatus(sms_pb2.GetStatusRequest(transaction_id="grpc-ok-1"),
                                       metadata=md_other, timeout=T))

    # CheckTextLen.
    t = sms.CheckTextLen(sms_pb2.CheckTextLenRequest(message="hello"), metadata=md, timeout=T)
    check(t.encoding == "gsm7" and t.parts == 1 and t.units == 5 and t.characters == 5,
          "text_len_gsm7", repr(t))
    t = sms.CheckTextLen(sms_pb2.CheckTextLenRequest(message="a" * 200), metadata=md, timeout=T)
    check(t.parts == 2 and t.units_per_part == 153, "text_len_multipart", repr(t))
    t = sms.CheckTextLen(sms_pb2.CheckTextLenRequest(message="Привет"), metadata=md, timeout=T)
    check(t.encoding == "ucs2" and t.parts == 1 and t.unit, "text_len_ucs2", repr(t))
    expect_error("text_len_bad_encoding", SC.INVALID_ARGUMENT, "invalid_field",
                 lambda: sms.CheckTextLen(sms_pb2.CheckTextLenRequest(message="x", encoding="x"),
                                          metadata=md, timeout=T))
    expect_error("text_len_unauthenticated", SC.UNAUTHENTICATED, "missing_authorization",
                 lambda: sms.CheckTextLen(sms_pb2.CheckTextLenRequest(message="x", encoding="x"),
                                          timeout=T))
    expect_error("get_status_empty_id", SC.INVALID_ARGUMENT, "invalid_field",
                 lambda: sms.GetStatus(sms_pb2.GetStatusRequest(), metadata=md, timeout=T))
    expect_error("get_status_unauthenticated", SC.UNAUTHENTICATED, "missing_authorization",
                 lambda: sms.GetStatus(sms_pb2.GetStatusRequest(), timeout=T))
    expect_error("check_esme_unauthenticated", SC.UNAUTHENTICATED, "missing_authorization",
                 lambda: sms.CheckESME(sms_pb2.CheckESMERequest(esme=-1), timeout=T))

    # CheckESME for one link, and an unknown id.
    e = sms.CheckESME(sms_pb2.CheckESMERequest(esme=100), metadata=md, timeout=T)
    check(len(e.links) == 1 and e.links[0].id == 100 and e.links[0].state == "connected"
          and e.links[0].binds_up >= 1 and e.links[0].configured_rate == 10000,
          "check_esme_one", repr(e))
    expect_error("check_esme_unknown", SC.NOT_FOUND, "unknown_esme",
                 lambda: sms.CheckESME(sms_pb2.CheckESMERequest(esme=999), metadata=md,
                                       timeout=T))

    # A stream with one bad item: three answers, the bad one a per-item failure.
    items = [req(task_id=1, daddr="+4915100000301"), req(task_id=2, daddr="bad"),
             req(task_id=3, daddr="+4915100000303")]
    answers = list(sms.SendMessageStream(iter(items), metadata=md, timeout=T))
    by_task = {x.task_id: x for x in answers}
    check(len(answers) == 3 and by_task[1].success and by_task[3].success
          and not by_task[2].success and by_task[2].code == "invalid_address"
          and by_task[2].grpc_code == 3, "stream_mixed", repr(answers))
    # A stream without credentials: every item answers UNAUTHENTICATED (16).
    answers = list(sms.SendMessageStream(iter(items[:2]), timeout=T))
    check(len(answers) == 2 and all(x.grpc_code == 16 and x.code == "missing_authorization"
                                    for x in answers), "stream_unauthenticated", repr(answers))
    print("RESULT " + json.dumps({"ok": True}), flush=True)


def run_stream(a, sms, sms_pb2, md):
    n = a.n
    dests = ["+49152%08d" % i for i in range(n)]

    def gen():
        for i in range(n):
            yield sms_pb2.SmsRequest(task_id=i, transaction_id="stream-%d" % i, esme=100,
                                     saddr="Test", daddr=dests[i], message="stream %d" % i)

    started = time.time()
    answers = list(sms.SendMessageStream(gen(), metadata=md, timeout=60))
    elapsed = time.time() - started
    tasks = sorted(x.task_id for x in answers)
    bad = [x for x in answers if not x.success]
    check(len(answers) == n, "stream_count", "%d answers for %d requests" % (len(answers), n))
    check(tasks == list(range(n)), "stream_one_answer_each")
    check(not bad, "stream_all_accepted", repr(bad[:3]))
    check(all(x.transaction_id == "stream-%d" % x.task_id and len(x.message_ids) == 1
              for x in answers), "stream_ids_match")
    print("RESULT " + json.dumps({"n": n, "elapsed_s": elapsed}), flush=True)


if __name__ == "__main__":
    main()
