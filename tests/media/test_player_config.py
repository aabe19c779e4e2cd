"""Music-on-hold configuration: `media.music_on_hold` (the default), a hunt queue's and a routed
queue's own `music_on_hold` ("" for none), each file checked at load with the YAML path and line
of a bad one."""

from __future__ import annotations

import wave
from pathlib import Path

import pytest
from vaultpbx.routing import RouterConfig
from vaultpbx.runtime.config import ConfigError, load_config, music_on_hold_by_queue


def wav(path: Path, *, rate: int = 8000, channels: int = 1) -> str:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\x00\x01" * 160 * channels)
    return str(path)


def config_text(default: str, hunt: str | None, routed: str | None) -> str:
    def own(value: str | None) -> str:
        return "" if value is None else f", music_on_hold: '{value}'"

    return (
        "extensions:\n  '2001': {password: x}\n"
        f"queues:\n  hunt: {{members: ['2001']{own(hunt)}}}\n"
        "  plain: {members: ['2001']}\n"
        "routing:\n  skills: [english]\n"
        f"  queues:\n    support: {{skills: {{english: 1}}{own(routed)}}}\n"
        "    sales: {skills: {english: 1}}\n"
        "dialplan:\n  - {match: '709', queue: hunt}\n"
        f"media:\n  workers: 1\n  music_on_hold: '{default}'\n"
    )


def test_each_queue_gets_its_own_file_or_the_default_or_none(tmp_path: Path) -> None:
    default, mine = wav(tmp_path / "default.wav"), wav(tmp_path / "mine.wav")
    path = tmp_path / "vaultpbx.yaml"
    path.write_text(config_text(default, "", mine))
    by_queue = music_on_hold_by_queue(load_config(path).config)
    assert by_queue == {"plain": default, "support": mine, "sales": default}  # hunt: "" = none


@pytest.mark.parametrize(("where", "line", "why"), [
    ("media.music_on_hold", 15, "no such file"),
    ("queues.hunt.music_on_hold", 4, "is 16000 Hz"),
    ("routing.queues.support.music_on_hold", 9, "2 channel(s)"),
])
def test_a_bad_file_is_a_load_error_naming_its_yaml_path(tmp_path: Path, where: str, line: int,
                                                         why: str) -> None:
    good = wav(tmp_path / "good.wav")
    bad = {"media.music_on_hold": str(tmp_path / "absent.wav"),
           "queues.hunt.music_on_hold": wav(tmp_path / "wide.wav", rate=16000),
           "routing.queues.support.music_on_hold": wav(tmp_path / "st.wav", channels=2)}[where]
    path = tmp_path / "vaultpbx.yaml"
    path.write_text(config_text(bad if where.startswith("media") else good,
                                bad if where.startswith("queues") else None,
                                bad if where.startswith("routing") else None))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert error.value.path == where and error.value.line == line
    assert why in str(error.value) and bad in str(error.value)


def test_router_config_wants_a_path_string() -> None:
    raw = {"skills": ["english"], "queues": {"support": {"music_on_hold": 5}}}
    with pytest.raises(ValueError, match=r"routing\.queues\.support\.music_on_hold: must be a"):
        RouterConfig.from_dict(raw)
    raw["queues"]["support"]["music_on_hold"] = "sounds/x.wav"  # type: ignore[index]
    assert RouterConfig.from_dict(raw).queues["support"].music_on_hold == "sounds/x.wav"
