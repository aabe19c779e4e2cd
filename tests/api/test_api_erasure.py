"""POST /erasures and its approval, in-process over a real keystore and call-record store: the
number goes in the body only, is never echoed, audited or passed to the API_REQUEST hook."""

from __future__ import annotations

import json
from pathlib import Path

from vaultpbx.b2bua.call import CallRecord
from vaultpbx.hooks.registry import HookPoint

from .api_helpers import Harness, body, erasure_service, make_harness

NUMBER = "020 7946 0000"


def _call(call_id: str, caller: str) -> CallRecord:
    return CallRecord(call_id=call_id, caller=caller, callee="1001", route_kind="trunk",
                      route_name="t", started=1.0, answered=2.0, ended=3.0, cause="n",
                      status=200, legs="[]")


def _traces(h: Harness) -> str:
    h.audit.close()
    return (h.audit.directory / "audit.jsonl").read_text() + json.dumps(
        [e for _, e in h.events], default=str)


def test_without_four_eyes_an_admin_erases_at_once(tmp_path: Path) -> None:
    h = make_harness(tmp_path, security={"privacy": {"erasure_needs_approval": False}})
    service = erasure_service(h, needs_approval=False)
    h.api.erasure = service
    cdr = service.stores[1]
    cdr.write([_call("a", "+442079460000"), _call("b", "+447700900123")])
    token = h.token("admin")
    for bad in ({}, {"number": ""}, {"number": 7}, {"number": "1" * 65}):
        assert h.request("POST", "/erasures", token=token, body=bad).status == 400
    response = h.request("POST", "/erasures", token=token, body={"number": NUMBER})
    assert response.status == 200
    assert body(response)["erased"] == {"recordings": 0, "cdr": 1}
    assert [r["caller"] for r in sorted(cdr.recent(), key=lambda r: r["call_id"])] == [
        "", "+447700900123"]
    traces = _traces(h)
    assert "7946" not in traces and "7946" not in response.body.decode()
    assert '"erasure.execute"' in traces


def test_four_eyes_over_the_api(harness: Harness) -> None:
    h = harness
    h.api.erasure = erasure_service(h)
    asked = h.request("POST", "/erasures", token=h.token("admin"), body={"number": NUMBER})
    assert asked.status == 202 and "7946" not in asked.body.decode()
    request_id = body(asked)["request"]
    listed = body(h.request("GET", "/erasures", token=h.token("admin2")))["requests"]
    assert [(r["request"], r["requested_by"]) for r in listed] == [(request_id, "admin")]
    own = h.request("POST", f"/erasures/{request_id}/approve", token=h.token("admin"))
    assert own.status == 403 and "four eyes" in body(own)["reason"]
    assert h.heard(HookPoint.ACCESS_DENIED)[-1]["actor"] == "admin"
    assert h.request("POST", "/erasures/era-nope/approve", token=h.token("admin2")).status == 404
    done = h.request("POST", f"/erasures/{request_id}/approve", token=h.token("admin2"))
    assert done.status == 200 and body(done)["erased"] == {"recordings": 0, "cdr": 0}
    assert h.request("POST", f"/erasures/{request_id}/approve",
                     token=h.token("admin2")).status == 404  # used up
    assert body(h.request("GET", "/erasures", token=h.token("admin")))["requests"] == []
    assert "7946" not in _traces(h)


def test_no_erasure_service_is_404(harness: Harness) -> None:
    response = harness.request("POST", "/erasures", token=harness.token("admin"),
                               body={"number": NUMBER})
    assert response.status == 404
