"""Path templates for the admin API: `/recordings/{id}/export` matched segment by segment.

Invariants:
- A `{name}` segment matches exactly one non-empty path segment (never a `/`), percent-decoded;
  every other segment must be equal. No regular expressions, no prefix matching.
- Exact paths win over templates; among templates the first registered wins.
- Matching costs one split of the path and a walk over the templates with that segment count.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar
from urllib.parse import unquote

T = TypeVar("T")


def is_template(path: str) -> bool:
    return "{" in path


def _segments(path: str) -> tuple[str, ...]:
    return tuple(path.strip("/").split("/")) if path.strip("/") else ()


@dataclass(frozen=True, slots=True)
class _Template(Generic[T]):
    method: str
    path: str
    parts: tuple[str, ...]
    target: T

    def match(self, segments: tuple[str, ...]) -> dict[str, str] | None:
        params: dict[str, str] = {}
        for part, segment in zip(self.parts, segments, strict=True):
            if part.startswith("{") and part.endswith("}"):
                if not segment:
                    return None
                params[part[1:-1]] = unquote(segment)
            elif part != segment:
                return None
        return params


class TemplateRouter(Generic[T]):
    """(method, template) → target; `match` answers the target, its parameters, and whether the
    path is known under another method (so the server can say 405 rather than 404)."""

    __slots__ = ("_by_length",)

    def __init__(self, routes: Iterable[tuple[tuple[str, str], T]]) -> None:
        self._by_length: dict[int, list[_Template[T]]] = {}
        for (method, path), target in routes:
            if not is_template(path):
                continue
            parts = _segments(path)
            for part in parts:
                if ("{" in part or "}" in part) and not (
                        part.startswith("{") and part.endswith("}") and len(part) > 2):
                    raise ValueError(
                        f"bad path template {path!r}: {{name}} must be a whole segment")
            self._by_length.setdefault(len(parts), []).append(
                _Template(method, path, parts, target))

    def __bool__(self) -> bool:
        return bool(self._by_length)

    def match(self, method: str, path: str) -> tuple[T | None, dict[str, str], bool]:
        segments = _segments(path)
        path_known = False
        for template in self._by_length.get(len(segments), ()):
            params = template.match(segments)
            if params is None:
                continue
            if template.method == method:
                return template.target, params, True
            path_known = True
        return None, {}, path_known
