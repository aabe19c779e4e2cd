"""The dialplan: the dialled number → where the call goes (extension, trunk or queue).

Rules are tried in order; the first whose regular expression matches the whole user part of the
Request-URI wins. Compiled once per configuration; a reload builds a new `Dialplan`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ..runtime.config import DialplanRule


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    kind: Literal["extension", "trunk", "queue"]
    name: str  # extension number, trunk name or queue name
    number: str  # the number to send (trunk) or the dialled number


class Dialplan:
    def __init__(self, rules: list[DialplanRule]) -> None:
        self._rules = [(re.compile(rule.match), rule) for rule in rules]

    def route(self, dialled: str) -> Route | None:
        for pattern, rule in self._rules:
            match = pattern.fullmatch(dialled)
            if match is None:
                continue
            if rule.extension is not None:
                return Route(kind="extension", name=match.expand(rule.extension), number=dialled)
            if rule.trunk is not None:
                return Route(kind="trunk", name=rule.trunk, number=match.expand(rule.number))
            assert rule.queue is not None
            return Route(kind="queue", name=rule.queue, number=dialled)
        return None
