"""pyproject.toml pins the pylibsrtp the relay's fast path was written against.

engine/media/srtp.py calls libsrtp through pylibsrtp's private cffi binding (`_binding`,
`Session._srtp/_cdata/_buffer`). Private internals may move in any release, so an open range
(`>=0.10`) lets a clean install pick a version where the fast path silently falls back or, worse,
misreads a moved attribute. The dependency must name one version, and it must be the installed one
(the one test_srtp.py checks the fast path against).
"""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def test_pylibsrtp_is_pinned_to_the_version_the_fast_path_was_written_against():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(text) for text in project["dependencies"]]
    [pylibsrtp] = [r for r in requirements if r.name == "pylibsrtp"]
    specifiers = list(pylibsrtp.specifier)
    assert [s.operator for s in specifiers] == ["=="], f"not pinned: {pylibsrtp}"
    assert version("pylibsrtp") == specifiers[0].version == "1.0.0"
