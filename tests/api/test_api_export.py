"""Four-eyes export: requester cannot approve, a second admin can, an approval is used once;
agents never export; 501 downloads within 10 minutes lock the account; a real sealed recording
exported through the keystore adapter, streamed byte for byte as the offline exporter writes it,
and a tampered one refused before any audio is sent."""

from __future__ import annotations

from pathlib import Path

import pytest
from vaultpbx.api.recordings import KeystoreRecordings
from vaultpbx.hooks.registry import HookPoint, HookRegistry
from vaultpbx.recording.container import Codec, Direction, RecordingMetadata
from vaultpbx.recording.export import export_wav
from vaultpbx.recording.kek import LocalFileKek
from vaultpbx.recording.keystore import Keystore
from vaultpbx.recording.recorder import start_recording
from vaultpbx.recording.stream import WavStream

from ..recording.recording_helpers import (
    FRAME,
    T0,
    WALL,
    flip_bit,
    frame_offsets,
    write_recording,
)
from .api_helpers import (
    RECORDING_ID,
    FakeRecordings,
    Harness,
    Reply,
    ServerThread,
    body,
    make_harness,
)

EXPORT_REQUESTS = f"/recordings/{RECORDING_ID}/export-requests"


def ask(h: Harness, token: str) -> str:
    response = h.request("POST", EXPORT_REQUESTS, token=token)
    assert response.status == 201, response.body
    return str(body(response)["id"])


def download(h: Harness, token: str, request_id: str) -> int:
    return h.request("GET", f"/recordings/{RECORDING_ID}/export?request={request_id}",
                     token=token).status


def test_requester_cannot_approve_own_request_second_admin_can(harness: Harness) -> None:
    h = harness
    alice, bob = h.token("admin"), h.token("admin2")
    request_id = ask(h, alice)
    assert download(h, alice, request_id) == 403  # not approved yet
    own = h.request("POST", f"/export-requests/{request_id}/approve", token=alice)
    assert own.status == 403 and "second person" in body(own)["reason"]
    assert h.heard(HookPoint.ACCESS_DENIED)[-1]["actor"] == "admin"
    granted = h.request("POST", f"/export-requests/{request_id}/approve", token=bob)
    assert granted.status == 200
    assert body(granted)["download"] == f"/recordings/{RECORDING_ID}/export?request={request_id}"
    # Only the requester may use it, once.
    assert download(h, bob, request_id) == 403
    assert download(h, alice, request_id) == 200
    assert download(h, alice, request_id) == 403
    assert h.recordings.exports == [(RECORDING_ID, "admin")]
    approvals = [(e["action"], e["actor"]) for e in h.heard(HookPoint.APPROVAL)]
    assert approvals == [("approval.request", "admin"), ("approval.grant", "admin2")]
    accessed = [(e["action"], e["details"]["allowed"])
                for e in h.heard(HookPoint.RECORDING_ACCESSED)]
    assert accessed == [("recording.export", False), ("recording.export", False),
                        ("recording.export", True), ("recording.export", False)]


def test_supervisor_export_needs_an_admin(harness: Harness) -> None:
    h = harness
    sue = h.token("supervisor")
    request_id = ask(h, sue)
    assert h.request("POST", f"/export-requests/{request_id}/approve", token=sue).status == 403
    pending = body(h.request("GET", "/export-requests", token=h.token("admin")))["requests"]
    assert [r["id"] for r in pending] == [request_id]
    assert h.request("POST", f"/export-requests/{request_id}/approve",
                     token=h.token("admin")).status == 200
    assert download(h, sue, request_id) == 200


@pytest.mark.parametrize("role", ["agent", "qa"])
def test_agents_and_qa_can_never_export(harness: Harness, role: str) -> None:
    h = harness
    token = h.token(role)
    # Even holding an approved request id of someone else, the route refuses the role.
    request_id = ask(h, h.token("supervisor"))
    h.request("POST", f"/export-requests/{request_id}/approve", token=h.token("admin"))
    assert h.request("POST", EXPORT_REQUESTS, token=token).status == 403
    assert download(h, token, request_id) == 403
    assert h.recordings.exports == []


def test_an_approval_covers_one_recording(harness: Harness) -> None:
    h = harness
    h.recordings.rows.append(dict(h.recordings.rows[0], recording_id="ab" * 16))
    alice = h.token("admin")
    request_id = ask(h, alice)
    h.request("POST", f"/export-requests/{request_id}/approve", token=h.token("admin2"))
    other = h.request("GET", f"/recordings/{'ab' * 16}/export?request={request_id}",
                      token=alice)
    assert other.status == 403
    assert download(h, alice, request_id) == 200


def test_unknown_recording_and_request(harness: Harness) -> None:
    h = harness
    alice = h.token("admin")
    assert h.request("POST", f"/recordings/{'cd' * 16}/export-requests", token=alice
                     ).status == 404
    assert h.request("POST", "/export-requests/apr-404/approve", token=alice).status == 404


def _approved(h: Harness, alice: str, bob: str) -> str:
    request_id = ask(h, alice)
    assert h.request("POST", f"/export-requests/{request_id}/approve", token=bob).status == 200
    return request_id


def test_501_downloads_in_10_minutes_lock_the_account(harness: Harness) -> None:
    h = harness
    alice, bob = h.token("admin"), h.token("admin2")
    start = h.clock.now
    for i in range(500):
        assert download(h, alice, _approved(h, alice, bob)) == 200, i
        h.clock.advance(1.0)  # 500 downloads in 500 s: within the 600 s window
    assert h.clock.now - start < 600
    assert h.heard(HookPoint.SECURITY_ALERT) == []
    last = _approved(h, alice, bob)
    response = h.request("GET", f"/recordings/{RECORDING_ID}/export?request={last}",
                         token=alice)
    assert response.status == 423
    assert len(h.recordings.exports) == 500
    alerts = h.heard(HookPoint.SECURITY_ALERT, "alert.download_burst")
    assert [a["target"] for a in alerts] == ["admin"]
    assert alerts[0]["details"]["downloads"] == 501
    # Locked: the session is gone, a correct login (with TOTP) is refused, the lock is audited.
    assert h.request("GET", "/me", token=alice).status == 401
    assert h.login("admin").status == 401
    assert [e["target"] for e in h.heard(HookPoint.USER_CHANGE, "account.lock")] == ["admin"]
    # The other admin is untouched, and lifts the lock (audited); then alice may log in.
    assert h.request("GET", "/me", token=bob).status == 200
    assert h.request("POST", "/users/admin/unlock", token=bob).status == 200
    assert [e["actor"] for e in h.heard(HookPoint.USER_CHANGE, "account.unlock")] == ["admin2"]
    assert h.login("admin").status == 200


def test_downloads_spread_over_more_than_10_minutes_do_not_lock(tmp_path: Path) -> None:
    h = make_harness(tmp_path)
    alice, bob = h.token("admin"), h.token("admin2")
    for _ in range(600):
        assert download(h, alice, _approved(h, alice, bob)) == 200
        h.clock.advance(1.25)  # at most 480 in any 600 s
    assert h.heard(HookPoint.SECURITY_ALERT) == []
    h.audit.close()


def test_lower_download_threshold_from_config(tmp_path: Path) -> None:
    h = make_harness(tmp_path, security={"anomaly": {"downloads": {"max": 3,
                                                                  "window_seconds": 60}}})
    alice, bob = h.token("admin"), h.token("admin2")
    statuses = [download(h, alice, _approved(h, alice, bob)) for _ in range(4)]
    assert statuses == [200, 200, 200, 423]
    h.audit.close()


def _keystore(tmp_path: Path) -> Keystore:
    # Made on the server's thread: the API reads the keystore there, as on the engine's loop.
    return ServerThread.get().call(Keystore, tmp_path / "keystore.db",
                                   LocalFileKek(tmp_path / "kek.key"), hooks=HookRegistry())


def _approved_export(h: Harness, recording_id: str) -> Reply:
    alice, bob = h.token("admin"), h.token("admin2")
    request_id = body(h.request("POST", f"/recordings/{recording_id}/export-requests",
                                token=alice))["id"]
    assert h.request("POST", f"/export-requests/{request_id}/approve", token=bob).status == 200
    return h.request("GET", f"/recordings/{recording_id}/export?request={request_id}",
                     token=alice)


def test_export_of_a_real_sealed_recording(tmp_path: Path) -> None:
    store = _keystore(tmp_path)
    recording_id, _, _, _ = ServerThread.get().call(
        write_recording, store, tmp_path / "recordings", seconds=1.0, caller="+8613812345678")
    access = KeystoreRecordings(store)
    h = make_harness(tmp_path / "api", recordings=access)  # type: ignore[arg-type]
    listed = body(h.request("GET", "/recordings", token=h.token("qa")))["recordings"]
    assert [r["recording_id"] for r in listed] == [recording_id]
    assert listed[0]["caller"] == "+86138****5678"
    assert "path" not in listed[0] and "key_id" not in listed[0]
    response = _approved_export(h, recording_id)
    assert response.status == 200 and response.content_type == "audio/wav"
    assert response.body[:4] == b"RIFF" and response.body[8:12] == b"WAVE"
    assert len(response.body) == 44 + 8000 * 2 * 2  # one second, stereo, 16-bit
    assert response.headers["Content-Length"] == str(len(response.body))
    # The stream is the very file the offline exporter writes.
    ServerThread.get().call(export_wav, store, recording_id, tmp_path / "offline.wav",
                            actor="test")
    assert response.body == (tmp_path / "offline.wav").read_bytes()
    verified = body(h.request("GET", f"/recordings/{recording_id}/verify",
                              token=h.token("admin")))
    assert verified["passed"] is True
    # One access record per export (the API's), none from the recording layer.
    exports = h.heard(HookPoint.RECORDING_ACCESSED, "recording.export")
    assert [e["details"]["allowed"] for e in exports] == [True]
    ServerThread.get().call(store.close)


def test_streamed_export_matches_the_file_export_across_gaps_and_blocks(tmp_path: Path) -> None:
    """A recording with a PCI pause (a gap on both channels), one-way audio at the end and
    blocks smaller than a chunk: byte for byte what export_wav writes."""
    store = _keystore(tmp_path)

    def record() -> str:
        writer = start_recording(store, tmp_path / "recordings", codec=Codec.PCMA, now=T0,
                                 wall_time=WALL, metadata=RecordingMetadata(caller="1"))
        for i in range(400):  # 8 s of 20 ms frames
            now = T0 + i * 0.02
            writer.append(Direction.FROM_CALLER, bytes([i % 256]) * FRAME, now)
            if i < 300:
                writer.append(Direction.FROM_CALLEE, bytes([(i * 7) % 256]) * FRAME, now)
            if i == 100:
                writer.sensitive_start(now)
            if i == 150:
                writer.sensitive_end(now)
            writer.maybe_seal(now)
        writer.close(T0 + 8)
        return writer.recording_id.hex()

    recording_id = ServerThread.get().call(record)
    ServerThread.get().call(export_wav, store, recording_id, tmp_path / "offline.wav",
                            actor="test")
    row = ServerThread.get().call(store.get, recording_id)
    key = ServerThread.get().call(store.data_key, recording_id)
    stream = WavStream(row.path, key, recording_id, allow_incomplete=False, block_size=5000)
    assert stream.measure() == (tmp_path / "offline.wav").stat().st_size
    blocks = list(stream.blocks())
    assert len(blocks) >= 5  # the header, then audio as it is decrypted: never all at once
    assert b"".join(blocks) == (tmp_path / "offline.wav").read_bytes()
    ServerThread.get().call(store.close)


def test_a_tampered_recording_is_refused_before_any_audio(tmp_path: Path) -> None:
    store = _keystore(tmp_path)
    recording_id, path, _, _ = ServerThread.get().call(
        write_recording, store, tmp_path / "recordings", seconds=6.0)
    offset, length = frame_offsets(path)[-2]  # the second-to-last chunk: late in the file
    flip_bit(path, offset + length - 1)
    h = make_harness(tmp_path / "api", recordings=KeystoreRecordings(store))  # type: ignore[arg-type]
    response = _approved_export(h, recording_id)
    assert response.status == 409 and response.content_type == "application/json"
    assert body(response) == {"error": "recording cannot be exported: ChunkAuthenticationError"}
    ServerThread.get().call(store.close)


def test_no_recording_store_is_404(tmp_path: Path) -> None:
    h = make_harness(tmp_path, recordings=FakeRecordings())
    h.api.recordings = None
    assert h.request("GET", "/recordings", token=h.token("admin")).status == 404
    h.audit.close()
