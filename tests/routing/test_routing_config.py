"""RouterConfig.from_dict: the typed model it builds and the key path each error names."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from vaultpbx.routing import (
    OverflowTarget,
    RelaxationStep,
    RouterConfig,
    ServiceLevelTarget,
    Strategy,
)

EXAMPLE_YAML = """
routing:
  skills: [sales, support, spanish, english]
  agents:
    alice: {skills: {sales: 5, english: 4}}
    bob:   {skills: {support: 3, spanish: 5}, capacity: 2, queues: [support]}
  queues:
    sales:
      skills: {sales: 3, english: 2}
      priority: 5
      strategy: most-skilled-first
      service_level: {answer_within: 20, target_share: 0.8}
      max_wait: 300
      overflow: {queue: support}
      wrap_up: 10
      ring_timeout: 12
      relaxation:
        - {after: 30, min_proficiency: 2}
        - {after: 90, drop_skills: [english]}
    support:
      skills: [support]
      max_wait: 600
      overflow: {destination: "sip:voicemail@pbx.example"}
"""


def example() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(EXAMPLE_YAML)["routing"]
    return loaded


def test_example_yaml_builds_the_typed_model() -> None:
    config = RouterConfig.from_dict(example())
    assert config.skills == frozenset({"sales", "support", "spanish", "english"})
    assert list(config.agents) == ["alice", "bob"]
    bob = config.agents["bob"]
    assert dict(bob.skills) == {"support": 3, "spanish": 5}
    assert bob.capacity == 2 and bob.queues == frozenset({"support"})
    assert config.agents["alice"].capacity == 1 and config.agents["alice"].queues is None
    sales = config.queues["sales"]
    assert dict(sales.skills) == {"sales": 3, "english": 2}
    assert sales.priority == 5
    assert sales.strategy is Strategy.MOST_SKILLED_FIRST
    assert sales.service_level == ServiceLevelTarget(answer_within=20.0, target_share=0.8)
    assert sales.max_wait == 300.0
    assert sales.overflow == OverflowTarget(queue="support")
    assert sales.wrap_up == 10.0 and sales.ring_timeout == 12.0
    assert sales.relaxation == (
        RelaxationStep(after=30.0, min_proficiency=2),
        RelaxationStep(after=90.0, drop_skills=frozenset({"english"})),
    )
    support = config.queues["support"]
    assert dict(support.skills) == {"support": 1}  # a list means "at least level 1"
    assert support.overflow == OverflowTarget(destination="sip:voicemail@pbx.example")
    assert support.strategy is Strategy.LONGEST_IDLE


def test_config_is_frozen() -> None:
    config = RouterConfig.from_dict(example())
    with pytest.raises(AttributeError):
        config.queues["sales"].priority = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.agents["bob"].skills["support"] = 5  # type: ignore[index]


def test_equal_dicts_give_equal_configs() -> None:
    assert RouterConfig.from_dict(example()) == RouterConfig.from_dict(example())


def _set(d: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        d = d[key]
    d[keys[-1]] = value


BAD = [
    ("colour", "red", "routing.colour: unknown key"),
    ("agents.alice.skils", {}, "routing.agents.alice.skils: unknown key"),
    ("agents.alice.skills", {"sales": 6}, "routing.agents.alice.skills.sales: must be 1..5"),
    ("agents.alice.skills", {"sales": 0}, "routing.agents.alice.skills.sales: must be 1..5"),
    ("agents.alice.skills", {"sales": True}, "routing.agents.alice.skills.sales: must be an int"),
    ("agents.alice.skills", {"cooking": 3},
     "routing.agents.alice.skills.cooking: unknown skill 'cooking'"),
    ("agents.alice.capacity", 0, "routing.agents.alice.capacity: must be >= 1"),
    ("agents.bob.queues", ["nope"], "routing.agents.bob.queues[0]: unknown queue 'nope'"),
    ("queues.sales.strategy", "random", "routing.queues.sales.strategy: must be one of"),
    ("queues.sales.max_wait", -1, "routing.queues.sales.max_wait: must be > 0 seconds"),
    ("queues.sales.ring_timeout", 0, "routing.queues.sales.ring_timeout: must be > 0 seconds"),
    ("queues.sales.service_level", {"target_share": 1.5},
     "routing.queues.sales.service_level.target_share: must be a share"),
    ("queues.sales.service_level", {"within": 3},
     "routing.queues.sales.service_level.within: unknown key"),
    ("queues.sales.overflow", {"queue": "sales"},
     "routing.queues.sales.overflow.queue: cannot overflow into itself"),
    ("queues.sales.overflow", {"queue": "billing"},
     "routing.queues.sales.overflow.queue: unknown queue 'billing'"),
    ("queues.sales.overflow", {"queue": "support", "destination": "x"},
     "routing.queues.sales.overflow: must set exactly one"),
    ("queues.sales.relaxation", [{"after": 30, "min_proficiency": 2}, {"after": 30,
                                                                       "drop_skills": ["sales"]}],
     "routing.queues.sales.relaxation[1].after: must be later than the previous step"),
    ("queues.sales.relaxation", [{"after": 30}],
     "routing.queues.sales.relaxation[0]: must set min_proficiency or drop_skills"),
    ("queues.sales.relaxation", [{"after": 30, "drop_skills": ["french"]}],
     "routing.queues.sales.relaxation[0].drop_skills[0]: unknown skill 'french'"),
    ("queues.sales.relaxation", [{"min_proficiency": 2}],
     "routing.queues.sales.relaxation[0].after: is required"),
    ("queues.sales.relaxation", [{"after": "soon", "min_proficiency": 2}],
     "routing.queues.sales.relaxation[0].after: must be a number of seconds"),
    ("queues.support.skills", ["support", "support"], "routing.queues.support.skills: lists a"),
    ("queues.support", [], "routing.queues.support: must be a mapping"),
    ("skills", "sales", "routing.skills: must be a list of names"),
]


@pytest.mark.parametrize(("dotted", "value", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_values_name_their_key_path(dotted: str, value: Any, message: str) -> None:
    d = copy.deepcopy(example())
    _set(d, dotted, value)
    with pytest.raises(ValueError) as raised:
        RouterConfig.from_dict(d)
    assert str(raised.value).startswith(message), str(raised.value)


def test_missing_skill_catalogue_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"^routing\.skills: is required"):
        RouterConfig.from_dict({"agents": {}})


def test_overflow_needs_max_wait() -> None:
    d = example()
    del d["queues"]["sales"]["max_wait"]
    with pytest.raises(ValueError, match=r"^routing\.queues\.sales\.overflow: needs max_wait"):
        RouterConfig.from_dict(d)


def test_custom_root_path_for_nested_sections() -> None:
    with pytest.raises(ValueError, match=r"^tenants\.acme\.routing\.x: unknown key"):
        RouterConfig.from_dict({"skills": [], "x": 1}, path="tenants.acme.routing")


def test_every_field_has_a_docstring() -> None:
    source = open(RouterConfig.from_dict.__code__.co_filename).read()
    import ast

    tree = ast.parse(source)
    for node in tree.body:
        if not (isinstance(node, ast.ClassDef) and node.name != "Strategy"):
            continue
        body = node.body
        for i, stmt in enumerate(body):
            if isinstance(stmt, ast.AnnAssign):
                following = body[i + 1] if i + 1 < len(body) else None
                assert (isinstance(following, ast.Expr)
                        and isinstance(following.value, ast.Constant)), (
                    f"{node.name}.{ast.unparse(stmt.target)} has no docstring")
