"""Security alerts reach a configured webhook: a real HTTP server on 127.0.0.1 receives them."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from vaultpbx.security.anomaly import AnomalyConfig, AnomalyDetector, WebhookSink


class Receiver(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers["content-length"])
        Receiver.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_download_burst_alert_is_posted_to_the_webhook() -> None:
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Receiver.received.clear()
    url = f"http://127.0.0.1:{server.server_address[1]}/alerts"
    config = AnomalyConfig.from_dict({"downloads": {"max": 5, "window_seconds": 60},
                                      "webhook": {"url": url, "timeout_seconds": 2}})
    sink = WebhookSink(config.webhook_url or "", config.webhook_timeout)
    detector = AnomalyDetector(config, sinks=[sink])
    try:
        allowed = [detector.record_download("mallory", 1000.0 + i) for i in range(6)]
        assert allowed[:5] == [True] * 5 and allowed[5] is False
        deadline = time.monotonic() + 5
        while not Receiver.received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert Receiver.received and Receiver.received[0]["kind"] == "download_burst"
        assert Receiver.received[0]["account"] == "mallory"
        assert sink.delivered == 1 and sink.failed == 0
    finally:
        sink.close()
        server.shutdown()


def test_unreachable_webhook_is_counted_not_raised() -> None:
    sink = WebhookSink("http://127.0.0.1:9/nothing", timeout=1.0)
    detector = AnomalyDetector(AnomalyConfig.from_dict({"downloads": {"max": 1}}), sinks=[sink])
    detector.record_download("a", 1.0)
    detector.record_download("a", 2.0)
    deadline = time.monotonic() + 5
    while sink.failed == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sink.failed == 1
    sink.close()


def test_webhook_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="webhook.url"):
        AnomalyConfig.from_dict({"webhook": {"url": "file:///etc/passwd"}})
