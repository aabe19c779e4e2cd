"""The SDP core and the RTP helpers do no I/O and draw no randomness of their own (STYLE §1)."""

from __future__ import annotations

import ast
import pathlib

import pytest

ENGINE = pathlib.Path(__file__).parents[2] / "engine"
FORBIDDEN = {"asyncio", "socket", "ssl", "time", "random", "selectors", "os", "secrets"}
NO_IO_FILES = [*sorted((ENGINE / "sdp").glob("*.py")), ENGINE / "media" / "rtp.py"]


@pytest.mark.parametrize("path", NO_IO_FILES, ids=lambda p: str(p.relative_to(ENGINE)))
def test_module_imports_no_io(path):
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN
