"""The controller's local answer and music on hold, through a real media worker process.

The caller is answered by the media plane alone (one codec the player can send), hears the file
as RTP/SRTP, and the callee is offered only that codec; the callee's answer then returns the
very same SDP for the caller and replaces the music in the same stream.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
from vaultpbx.media.controller import MediaController
from vaultpbx.media.player import MusicSource
from vaultpbx.media.rtp import parse_rtp_header
from vaultpbx.media.rtppeer import RtpPeer, payload_number
from vaultpbx.sdp import MediaPolicy, SdpNegotiationError, parse_sdp

from tests.media.test_worker import PLAIN, SRTP, Events, run

pytestmark = pytest.mark.integration


def music_file(tmp_path: Path) -> str:
    samples = ((np.arange(8000) * 53) % 16000 - 8000).astype("<i2")  # one second, varied
    path = tmp_path / "moh.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(samples.tobytes())
    return str(path)


def sequence(packet: bytes) -> int:
    header = parse_rtp_header(packet)
    assert header is not None
    return header.sequence


def test_caller_hears_music_then_the_callee_in_one_stream_with_one_answer(
        tmp_path: Path) -> None:
    source = music_file(tmp_path)
    pcma = MusicSource.load(source).frames["PCMA"]

    async def scenario(controller: MediaController, events: Events) -> None:
        caller = RtpPeer(ssrc=0xA, suite="AEAD_AES_256_GCM")
        agent = RtpPeer(ssrc=0xB)
        offer_for_callee = await controller.offer(
            "q1", "caller", caller.sdp(payload_types=(8, 0, 101)), policy=SRTP,
            other_policy=PLAIN)
        assert parse_sdp(offer_for_callee).media[0].formats == ("0", "8", "101")  # both, before
        local = await controller.answer_locally("q1")
        # PCMU is our policy's first choice and the caller offers it too.
        assert (local.payload_type, local.encoding) == (0, "PCMU")
        answer = parse_sdp(local.answer).media[0]
        assert answer.formats == ("0", "101") and answer.proto == "RTP/SAVP"
        assert answer.cryptos()[0].suite == "AEAD_AES_256_GCM"
        narrowed = parse_sdp(local.offer).media[0]
        assert narrowed.formats == ("0", "101") and not narrowed.cryptos()
        caller.learn(local.answer)
        await controller.play("q1", source)
        music = await caller.receive(10, 3.0)
        assert len(music) >= 10 and caller.failures == 0
        pcmu = MusicSource.load(source).frames["PCMU"]
        assert [p[12:] for p in music[:10]] == list(pcmu[:10])
        assert pcma[0] != pcmu[0]
        stats = (await controller.stats())["workers"][0]
        assert stats["players"] == 1
        # The agent answers the narrowed offer: the caller's answer is the same bytes.
        again = await controller.answer("q1", "callee", agent.answer_to(local.offer))
        assert again == local.answer
        assert (await controller.stats())["workers"][0]["players"] == 0
        last = sequence((music + caller.drain())[-1])
        for n in range(5):
            agent.send(n)
            caller.send(50 + n)
        speech = await caller.receive(5, 2.0)
        assert [payload_number(p[12:]) for p in speech] == list(range(5))
        assert [sequence(p) for p in speech] == [(last + 1 + n) & 0xFFFF for n in range(5)]
        assert [payload_number(p[12:]) for p in await agent.receive(5)] == list(range(50, 55))
        # The 200 after the 183: the same answer again gives the same SDP, nothing re-applied.
        assert await controller.answer("q1", "callee", agent.sdp()) == local.answer
        await controller.delete("q1")

    run(scenario)


def test_deleting_a_call_while_it_plays_frees_the_player(tmp_path: Path) -> None:
    source = music_file(tmp_path)

    async def scenario(controller: MediaController, events: Events) -> None:
        caller = RtpPeer(ssrc=0xA)
        await controller.offer("q2", "caller", caller.sdp(), policy=PLAIN, other_policy=PLAIN)
        local = await controller.answer_locally("q2")
        caller.learn(local.answer)
        await controller.play("q2", source)
        assert len(await caller.receive(3)) >= 3
        await controller.delete("q2")
        stats = (await controller.stats())["workers"][0]
        assert stats["players"] == 0 and stats["players-started"] == 1
        caller.drain()
        assert await caller.quiet(0.1) == []

    run(scenario)


def test_no_codec_the_player_can_send_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    async def scenario(controller: MediaController, events: Events) -> None:
        caller, agent = RtpPeer(ssrc=0xA), RtpPeer(ssrc=0xB)
        wide = MediaPolicy(srtp="off", codecs=("G722", "PCMU"))
        offer = await controller.offer("q3", "caller", caller.sdp(payload_types=(9, 101)),
                                       policy=wide, other_policy=wide)
        with pytest.raises(SdpNegotiationError, match="no codec in common"):
            await controller.answer_locally("q3")
        # The call goes on as if nothing happened: the callee's answer reaches the caller.
        answer = await controller.answer("q3", "callee", agent.answer_to(
            offer, payload_types=(9, 101)))
        assert parse_sdp(answer).media[0].formats[0] == "9"
        await controller.delete("q3")

    run(scenario)


def test_a_caller_that_will_not_receive_is_not_answered_locally() -> None:
    async def scenario(controller: MediaController, events: Events) -> None:
        caller = RtpPeer(ssrc=0xA)
        await controller.offer("q4", "caller", caller.sdp(direction="sendonly"), policy=PLAIN,
                               other_policy=PLAIN)
        with pytest.raises(SdpNegotiationError, match="does not receive"):
            await controller.answer_locally("q4")
        await controller.delete("q4")

    run(scenario)
