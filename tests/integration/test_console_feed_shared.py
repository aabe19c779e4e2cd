"""The live feed on a real engine: many WebSockets of one supervisor share each snapshot.

A snapshot masks every live call; built per socket, its cost grew with clients x calls on the
SIP loop (bench/results/console.md, part 2). With 30 sockets open and each receiving its
snapshots, the engine's own counters must show many looks per snapshot built (one per socket
each would be a ratio of 1).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import pyotp
import pytest
from argon2 import PasswordHasher

from tests.integration.engine import RunningEngine
from tests.integration.test_sipp_calls import start_pbx

pytestmark = pytest.mark.integration

SECRET = pyotp.random_base32(32)
SOCKETS = 30


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEngine]:
    started: list[RunningEngine] = []
    users = [{"name": "sup", "role": "supervisor", "totp_secret": SECRET,
              "password_hash": PasswordHasher().hash("sup-password-123")}]
    try:
        yield start_pbx(started, tmp_path_factory.mktemp("console-feed"), {
            "security": {"floodguard": {"trusted": ["127.0.0.1/32"]}, "users": users}})
    finally:
        for each in started:
            each.stop(timeout=10)


def test_many_sockets_share_each_snapshot(engine: RunningEngine) -> None:
    async def run() -> tuple[dict[str, float], dict[str, float]]:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            async with http.post(f"{engine.admin_url}/session", json={
                    "user": "sup", "password": "sup-password-123",
                    "otp": pyotp.TOTP(SECRET).now()},
                    headers={"Origin": engine.admin_url}) as response:
                assert response.status == 200, await response.text()
                cookie = response.headers["Set-Cookie"].partition("=")[2].split(";", 1)[0]
            headers = {"Origin": engine.admin_url, "Cookie": f"__Host-vaultpbx={cookie}"}
            url = engine.admin_url.replace("http", "ws", 1) + "/ws"
            sockets = [await http.ws_connect(url, headers=headers) for _ in range(SOCKETS)]
            try:
                for ws in sockets:
                    assert (await ws.receive_json(timeout=10))["type"] == "history"
                    assert (await ws.receive_json(timeout=10))["type"] == "snapshot"
                before = await asyncio.to_thread(engine.metrics)
                for ws in sockets:  # at least a second with every socket looking
                    for _ in range(2):
                        assert (await ws.receive_json(timeout=10))["type"] == "snapshot"
                after = await asyncio.to_thread(engine.metrics)
            finally:
                for ws in sockets:
                    await ws.close()
            return before, after

    before, after = asyncio.run(run())
    assert after["vaultpbx_console_ws_open"] == SOCKETS
    looks = after["vaultpbx_console_feed_looks_total"] - before["vaultpbx_console_feed_looks_total"]
    built = (after["vaultpbx_console_snapshots_built_total"]
             - before["vaultpbx_console_snapshots_built_total"])
    assert looks >= SOCKETS * 2  # each socket looked several times in the window
    assert 1 <= built and looks >= 5 * built, (looks, built)
