"""The call-control core does no I/O and draws no randomness of their own (STYLE §1): time comes
in as `now`, tags and branches from the injected `token`, bytes leave through the transaction
layer. The ACD bridge (acd.py) is the router's adapter and is not listed here."""

from __future__ import annotations

import ast
import pathlib

import pytest

B2BUA = pathlib.Path(__file__).parents[2] / "engine" / "b2bua"
FORBIDDEN = {"asyncio", "socket", "ssl", "time", "random", "selectors", "os", "secrets",
             "sqlite3", "threading"}
CORE = ["b2bua.py", "authgate.py", "registrar.py", "location.py", "cdrmap.py", "dialplan.py",
        "call.py", "timers.py"]


@pytest.mark.parametrize("name", CORE)
def test_call_control_module_imports_no_io(name: str) -> None:
    tree = ast.parse((B2BUA / name).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN
