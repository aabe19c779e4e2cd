from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from vaultpbx.hooks.registry import HookPoint, HookRegistry
from vaultpbx.recording.kek import LocalFileKek
from vaultpbx.recording.keystore import Keystore, RetentionPolicy


@dataclass
class Env:
    root: Path
    directory: Path
    store: Keystore
    events: list[tuple[HookPoint, object]]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    hooks = HookRegistry()
    seen: list[tuple[HookPoint, object]] = []
    for point in HookPoint:
        hooks.add_observer(point, lambda p, e: seen.append((p, e)))
    kek = LocalFileKek(tmp_path / "kek.key")
    store = Keystore(
        tmp_path / "keystore.db", kek, hooks=hooks,
        retention=RetentionPolicy(days_by_class={"sales": 30}),
    )
    store.check_kek()  # as the engine does at start: the first KEK exists before any call
    yield Env(root=tmp_path, directory=tmp_path / "recordings", store=store, events=seen)
    store.close()


