"""A pjsua2 user agent in its own process, for integration tests.

pjsua2 may abort in `libDestroy` and cannot be initialised twice in one process, so every UA
runs as `python tests/integration/pjsua_peer.py '<json args>'` and reports what happens as JSON
lines on stdout (one object per line, always with an "event" key). The process ends with
`os._exit` after its last report: 0 when everything it was asked to do succeeded, 1 otherwise.

Arguments (JSON object):
    user, password, domain      the extension, its digest password, the SIP domain
    registrar                   registrar URI, e.g. "sip:127.0.0.1:5061;transport=tls"
    transport                   "tls", "tcp" or "udp" (default "tls")
    ca                          CA file for verifying the server (TLS)
    tls_proto                   "1.2" or "1.3": the only TLS version offered (default: pjsip's)
    rtp_port                    first local RTP port (give every UA its own)
    call                        URI to call once registered (omit to wait for calls)
    hangup_after                seconds a confirmed call lasts before we hang up (caller:
                                default 1; callee: default never; null: wait for the far end)
    cancel_after                caller: hang up (CANCEL) if not answered after this many seconds
    answer_calls                incoming calls to handle (180 at once, then 200) before finishing
    answer_after                seconds between the 180 and the 200 (negative: never answer)
    expect_confirmed            whether our calls should have been answered (default: true
                                unless cancel_after is given); decides the exit code
    timeout                     hard limit on the whole run, seconds (default 20)
    log_file                    append pjsip's whole log here (for debugging a failure)
    srtp                        "disabled" (default), "optional" or "mandatory" SDES-SRTP
    probe                       only report pjsua2's OpenSSL ("openssl" event) and exit

Events: "openssl" (probe), "ready", "sip" (a message pjsip logged: dir rx/tx, kind, method,
code, transport), "reg_state" (code, expiration), "registered", "incoming", "calling",
"call_state" (state, code, role), "hangup", "disconnected", "error", "done" (ok).

`PeerProcess` (no pjsua2 import) starts one of these and reads its events from the test.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()

_MSG_RE = re.compile(
    r"\b(RX|TX) \d+ bytes (Request|Response) msg (\S+?)/cseq=\d+ \(\w+\) (?:to|from) "
    r"(UDP|TCP|TLS) ")


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------------------------------------
# the UA (runs in the child process)
def openssl_of_pjsua2() -> dict[str, Any]:
    """The OpenSSL that pjsua2 was linked with (the wheel bundles its own): version number and
    whether it can speak TLS 1.3 (OpenSSL >= 1.1.1)."""
    import ctypes

    import pjsua2  # noqa: F401 - loads the bundled libcrypto into this process

    path = None
    with open("/proc/self/maps") as maps:
        for line in maps:
            name = line.rsplit(" ", 1)[-1].strip()
            if "/libcrypto" in name:
                path = name
                break
    if path is None:
        return {"path": None, "version_num": None, "tls13": None}
    lib = ctypes.CDLL(path)
    for symbol in ("OpenSSL_version_num", "SSLeay"):
        function = getattr(lib, symbol, None)
        if function is not None:
            function.restype = ctypes.c_ulong
            number = int(function())
            return {"path": path, "version_num": number, "tls13": number >= 0x10101000}
    return {"path": path, "version_num": None, "tls13": None}


def run_peer(args: dict[str, Any]) -> int:
    if args.get("probe"):
        emit("openssl", **openssl_of_pjsua2())
        emit("done", ok=True)
        sys.stdout.flush()
        os._exit(0)

    import pjsua2 as pj

    deadline = time.monotonic() + float(args.get("timeout", 20))
    seen: list[dict[str, Any]] = []  # filled from pjsip's logging, drained by the main loop
    state: dict[str, Any] = {"registered": False, "calls": [], "failed": None,
                             "answered": 0, "ended": 0}

    log_file = open(args["log_file"], "a") if args.get("log_file") else None

    class Writer(pj.LogWriter):
        def write(self, entry: Any) -> None:
            if log_file is not None:
                log_file.write(entry.msg if entry.msg.endswith("\n") else entry.msg + "\n")
                log_file.flush()
            match = _MSG_RE.search(entry.msg)
            if match is None:
                return
            direction, kind, what, transport = match.groups()
            item = {"dir": direction.lower(), "kind": kind.lower(), "transport": transport}
            if kind == "Response":
                code, _, method = what.partition("/")
                item.update(code=int(code), method=method)
            else:
                item.update(method=what)
            seen.append(item)

    class Call(pj.Call):
        def __init__(self, account: Any, call_id: int = pj.PJSUA_INVALID_ID) -> None:
            super().__init__(account, call_id)
            self.confirmed_at: float | None = None
            self.hung_up = False
            self.disconnected = False
            self.to_answer = False
            self.answered = False
            self.incoming_at: float | None = None
            self.started_at = 0.0

        def onCallState(self, prm: Any) -> None:  # noqa: N802 - pjsua2 callback name
            info = self.getInfo()
            emit("call_state", state=info.stateText, code=info.lastStatusCode,
                 role="caller" if info.role == pj.PJSIP_ROLE_UAC else "callee",
                 remote=info.remoteUri)
            if info.state == pj.PJSIP_INV_STATE_CONFIRMED and self.confirmed_at is None:
                self.confirmed_at = time.monotonic()
            if info.state == pj.PJSIP_INV_STATE_DISCONNECTED and not self.disconnected:
                self.disconnected = True
                state["ended"] += 1
                emit("disconnected", code=info.lastStatusCode, reason=info.lastReason,
                     confirmed=self.confirmed_at is not None,
                     duration=info.connectDuration.sec + info.connectDuration.msec / 1000)

    class Account(pj.Account):
        def onRegState(self, prm: Any) -> None:  # noqa: N802
            emit("reg_state", code=prm.code, reason=prm.reason, expiration=prm.expiration)
            if prm.code == 200 and prm.expiration > 0:
                if not state["registered"]:
                    state["registered"] = True
                    emit("registered", code=prm.code, expiration=prm.expiration)
            elif prm.code >= 300 or prm.code == 0:
                state["failed"] = f"register {prm.code} {prm.reason}"

        def onIncomingCall(self, prm: Any) -> None:  # noqa: N802
            call = Call(self, prm.callId)
            info = call.getInfo()
            emit("incoming", remote=info.remoteUri, local=info.localUri)
            call.to_answer = True
            state["calls"].append(call)

    ep = pj.Endpoint()
    ep.libCreate()
    ep_cfg = pj.EpConfig()
    ep_cfg.uaConfig.threadCnt = 0  # every callback runs in our loop below, on this thread
    ep_cfg.uaConfig.mainThreadOnly = True
    ep_cfg.uaConfig.userAgent = f"pjsua_peer/{args['user']}"
    writer = Writer()
    ep_cfg.logConfig.writer = writer
    ep_cfg.logConfig.level = 5
    ep_cfg.logConfig.consoleLevel = 5  # what reaches the writer (it replaces the console)
    ep_cfg.logConfig.msgLogging = True
    ep_cfg.medConfig.noVad = True
    ep.libInit(ep_cfg)

    transport = args.get("transport", "tls")
    tcfg = pj.TransportConfig()
    tcfg.port = 0
    if transport == "tls":
        tls = tcfg.tlsConfig
        if args.get("ca"):
            tls.CaListFile = args["ca"]
            tls.verifyServer = True
        proto = args.get("tls_proto")
        if proto:
            tls.proto = {"1.2": pj.PJ_SSL_SOCK_PROTO_TLS1_2,
                         "1.3": pj.PJ_SSL_SOCK_PROTO_TLS1_3}[proto]
        tls.msecTimeout = 5000
        kind = pj.PJSIP_TRANSPORT_TLS
    elif transport == "tcp":
        kind = pj.PJSIP_TRANSPORT_TCP
    else:
        kind = pj.PJSIP_TRANSPORT_UDP
    transport_id = ep.transportCreate(kind, tcfg)
    ep.libStart()
    ep.audDevManager().setNullDev()
    # G.711 only: pjsua2 would offer speex first.
    for codec in ep.codecEnum2():
        name = codec.codecId
        priority = {"PCMU": 255, "PCMA": 254}.get(name.split("/")[0], 0)
        ep.codecSetPriority(name, priority)

    acc_cfg = pj.AccountConfig()
    acc_cfg.idUri = f"sip:{args['user']}@{args['domain']}"
    acc_cfg.regConfig.registrarUri = args["registrar"]
    acc_cfg.regConfig.timeoutSec = int(args.get("expires", 300))
    acc_cfg.regConfig.retryIntervalSec = 0  # a failure is final: the test wants to see it
    acc_cfg.sipConfig.authCreds.append(
        pj.AuthCredInfo("digest", "*", args["user"], 0, args["password"]))
    acc_cfg.sipConfig.transportId = transport_id
    acc_cfg.mediaConfig.transportConfig.port = int(args.get("rtp_port", 0))
    acc_cfg.mediaConfig.transportConfig.portRange = 10
    acc_cfg.mediaConfig.srtpUse = {
        "disabled": pj.PJMEDIA_SRTP_DISABLED, "optional": pj.PJMEDIA_SRTP_OPTIONAL,
        "mandatory": pj.PJMEDIA_SRTP_MANDATORY}[args.get("srtp", "disabled")]
    # SDES over TLS signalling; 0 also lets a test use SDES over UDP/TCP.
    acc_cfg.mediaConfig.srtpSecureSignaling = 0
    acc_cfg.natConfig.iceEnabled = False
    account = Account()
    account.create(acc_cfg)
    emit("ready", transport=transport)

    target = args.get("call")
    hangup_after = args.get("hangup_after", 1.0 if target else None)
    cancel_after = args.get("cancel_after")
    answer_after = float(args.get("answer_after", 0.0))
    answer_calls = int(args.get("answer_calls", 0))
    expect_confirmed = bool(args.get("expect_confirmed", cancel_after is None))
    outgoing: Any = None
    ok = False
    while True:
        ep.libHandleEvents(20)
        while seen:
            emit("sip", **seen.pop(0))
        now = time.monotonic()
        if state["failed"] is not None:
            emit("error", reason=state["failed"])
            break
        if now > deadline:
            emit("error", reason="timeout")
            break
        for call in state["calls"]:
            if call.to_answer:  # ring at once, answer after answer_after (never if < 0)
                call.to_answer = False
                call.incoming_at = now
                op = pj.CallOpParam()
                op.statusCode = 180
                call.answer(op)
            if (call.incoming_at is not None and not call.answered and answer_after >= 0
                    and not call.disconnected and now - call.incoming_at >= answer_after):
                call.answered = True
                op = pj.CallOpParam()
                op.statusCode = 200
                call.answer(op)
                state["answered"] += 1
        if target and state["registered"] and outgoing is None:
            outgoing = Call(account)
            outgoing.started_at = now
            outgoing.makeCall(target, pj.CallOpParam(True))
            emit("calling", target=target)
        for call in [outgoing, *state["calls"]]:
            if call is None or call.hung_up or call.disconnected:
                continue
            if call.confirmed_at is not None and now - state.get("media_at", 0.0) >= 0.5:
                # RTP counters of the first stream, for tests that check media flowed.
                state["media_at"] = now
                try:
                    stat = call.getStreamStat(0)
                    emit("media", rx=stat.rtcp.rxStat.pkt, tx=stat.rtcp.txStat.pkt,
                         rx_lost=stat.rtcp.rxStat.loss)
                except Exception as exc:  # noqa: BLE001 - no stream yet
                    emit("media_error", reason=str(exc))
            if call.confirmed_at is not None:
                due = hangup_after is not None and now - call.confirmed_at >= hangup_after
            else:
                due = (call is outgoing and cancel_after is not None
                       and now - call.started_at >= cancel_after)
            if due:
                call.hung_up = True
                call.hangup(pj.CallOpParam())
                emit("hangup", confirmed=call.confirmed_at is not None)
        if outgoing is not None:
            if outgoing.disconnected:
                ok = (outgoing.confirmed_at is not None) == expect_confirmed
                break
        elif target is None:
            if answer_calls == 0 and state["registered"]:
                ok = True
                break
            if answer_calls and state["ended"] >= answer_calls:
                ok = all((c.confirmed_at is not None) == expect_confirmed
                         for c in state["calls"])
                break
    # Let the last transaction's answer (200 to BYE) show in the log, then leave.
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        ep.libHandleEvents(20)
    while seen:
        emit("sip", **seen.pop(0))
    emit("done", ok=ok)
    sys.stdout.flush()
    os._exit(0 if ok else 1)  # libDestroy may abort; nothing is left to clean up


# ------------------------------------------------------------------------------------------------
# the test side (no pjsua2 here)
class PeerProcess:
    """One pjsua_peer.py child: its events arrive on a queue read by a thread."""

    def __init__(self, args: dict[str, Any], name: str = "") -> None:
        self.name = name or str(args.get("user", "peer"))
        self.args = args
        self.events: list[dict[str, Any]] = []
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.process = subprocess.Popen(
            [sys.executable, str(HERE), json.dumps(args)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.stderr = ""

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                self._queue.put(json.loads(line))
            except json.JSONDecodeError:
                self._queue.put({"event": "stdout", "text": line})
        self._queue.put(None)

    def wait_for(self, event: str, timeout: float) -> dict[str, Any]:
        """Events up to and including the first `event`; AssertionError if it never comes."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.name}: no {event!r} in {timeout}s: {self.events}")
            try:
                item = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if item is None:
                self._queue.put(None)  # keep reporting the end to later callers
                raise AssertionError(
                    f"{self.name}: exited before {event!r}: {self.events}\n{self._stderr()}")
            self.events.append(item)
            if item["event"] == event:
                return item

    def finish(self, timeout: float) -> int:
        """Wait for the process to end (killing it after `timeout`); collect every event."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self._reader.join(5)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self.events.append(item)
        self._stderr()
        return self.process.returncode

    def _stderr(self) -> str:
        if self.process.poll() is not None and self.process.stderr is not None \
                and not self.stderr:
            self.stderr = self.process.stderr.read()[-4000:]
        return self.stderr

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def of(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]

    def sip(self, **match: Any) -> list[dict[str, Any]]:
        """SIP messages this UA logged, filtered by field values (dir, kind, method, code)."""
        return [e for e in self.of("sip") if all(e.get(k) == v for k, v in match.items())]


if __name__ == "__main__":
    run_peer(json.loads(sys.argv[1]))
