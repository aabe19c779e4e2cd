"""Reading a configuration costs at most linear time in the file: YAML alias bombs, recursive
aliases and oversized files are refused with an error naming the file and line, while the
anchors and merge keys that real configs use keep working."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from vaultpbx.runtime.config import ConfigError, load_config, parse_config
from vaultpbx.runtime.typedyaml import MAX_ALIAS_NODES, MAX_CONFIG_BYTES, load_yaml

ROOT = Path(__file__).resolve().parents[2]


def bomb(depth: int, width: int = 10) -> str:
    """`lol<depth>` expands to width**depth strings; the file grows linearly with depth."""
    lines = ['lol0: &a0 ["lol"]']
    lines += [f"lol{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]"
              for i in range(1, depth + 1)]
    return "\n".join(lines) + "\n"


def test_check_config_refuses_an_alias_bomb_at_the_alias_that_crosses_the_bound(
        tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text("logging: {level: info}\n" + bomb(9))  # 10^9 nodes expanded
    result = subprocess.run([sys.executable, "-m", "vaultpbx.runtime.cli", "check-config",
                             "-c", str(path)], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)  # a guard only: unbounded, this runs for hours
    assert result.returncode == 2
    # lol4 (line 6) is the first alias whose count passes 10,000 (10 + 110 + 1,110 + 11,110).
    assert f"{path}:line 6:" in result.stderr, result.stderr
    assert f"aliases expand to more than {MAX_ALIAS_NODES} nodes" in result.stderr


def test_the_cost_of_refusing_a_bomb_grows_with_the_file_not_with_the_expansion() -> None:
    def cost(depth: int) -> float:
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            with pytest.raises(ConfigError, match="aliases expand"):
                load_yaml(bomb(depth))
            best = min(best, time.perf_counter() - started)
        return best

    # depth 5 expands to 10^5 nodes, depth 40 to 10^40: unbounded, the second is 10^35 times
    # the work; bounded, both stop at the same alias (the fifth line).
    assert cost(40) < 20 * cost(5)


def test_aliases_are_counted_node_for_node_up_to_the_bound() -> None:
    # One anchored list of n scalars (n + 1 nodes) repeated k times by alias: k * (n + 1).
    def aliases(n: int, k: int) -> str:
        items = ", ".join(["1"] * n)
        return f"base: &b [{items}]\n" + "".join(f"copy{i}: *b\n" for i in range(k))

    data, _ = load_yaml(aliases(999, MAX_ALIAS_NODES // 1000))  # exactly the bound
    assert len(data) == 1 + MAX_ALIAS_NODES // 1000
    with pytest.raises(ConfigError, match=r"line 11: .*aliases expand") as caught:
        load_yaml(aliases(1000, MAX_ALIAS_NODES // 1000))  # one node over, at the last alias
    assert caught.value.line == 1 + MAX_ALIAS_NODES // 1000


def test_a_recursive_alias_is_refused_with_its_line() -> None:
    with pytest.raises(ConfigError, match="line 3: .*recursive YAML alias"):
        load_yaml("sip:\n  listen: &l\n    - *l\n")


def test_anchors_and_merge_keys_of_real_configs_work_and_name_their_lines() -> None:
    text = (
        "extensions:\n"
        "  '1001': &ext {password: one-secret, srtp: required}\n"
        "  '1002':\n"
        "    <<: *ext\n"
        "    password: two-secret\n"
        "queues:\n"
        "  hunt:\n"
        "    <<: &q {ring_timeout: 15}\n"
        "    members: ['1001', '1002']\n"
    )
    loaded = parse_config(text, "anchors.yaml")
    assert loaded.config.extensions["1002"].srtp == "required"
    assert loaded.config.extensions["1002"].password == "two-secret"  # own keys win
    assert loaded.config.queues["hunt"].ring_timeout == 15
    bad = text.replace("{ring_timeout: 15}", "{ring_timeout: soon}")
    with pytest.raises(ConfigError, match=r"anchors.yaml:line 8: queues.hunt.ring_timeout"):
        parse_config(bad, "anchors.yaml")


def test_a_file_over_the_size_bound_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text("# " + "x" * MAX_CONFIG_BYTES + "\nlogging: {level: info}\n")
    with pytest.raises(ConfigError, match=f"larger than {MAX_CONFIG_BYTES} bytes") as caught:
        load_config(path)
    assert str(path) in str(caught.value)


def test_nesting_thousands_deep_is_a_config_error_not_a_crash() -> None:
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_yaml("sip: " + "[" * 5000 + "]" * 5000 + "\n")
