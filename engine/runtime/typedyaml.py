"""YAML → frozen dataclasses, once, at load time, with errors that name the YAML path and line.

Invariants:
- Unknown keys are errors; missing keys take the field default or are errors when there is none.
- Every error names the dotted path (`sip.listen[1].port`) and the line in the file.
- The result holds no raw dicts except where a field is typed `dict[str, Any]` on purpose (a
  section owned by another package that validates it itself, see `LineMap`).
- Reading costs at most linear time in the file: a file is at most MAX_CONFIG_BYTES, and
  anchors/aliases (`&base` ... `*base`, `<<: *base`) may repeat at most MAX_ALIAS_NODES nodes in
  all, counted while the file is composed and before anything is expanded. A YAML alias bomb
  (a few lines expanding to 10^9 nodes) or a recursive alias is a ConfigError naming the line of
  the alias that crossed the bound, found in milliseconds.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    def __init__(self, path: str, line: int | None, message: str, source: str = "") -> None:
        where = f"{source}:" if source else ""
        where += f"line {line}: " if line is not None else ""
        super().__init__(f"{where}{path or '<root>'}: {message}")
        self.path = path
        self.line = line
        self.message = message


class LineMap:
    """Dotted path → line number, for sections validated outside this module."""

    def __init__(self) -> None:
        self.lines: dict[str, int] = {}

    def line_of(self, path: str) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return self.lines.get("")


MAX_CONFIG_BYTES = 1 << 20
"""Largest configuration file read (1 MiB: room for ~14,000 extensions, one per line)."""
MAX_ALIAS_NODES = 10_000
"""Nodes that aliases may repeat in all. Anchors in real configs share a few settings between
queues or extensions (tens to hundreds of nodes); a bound this size refuses expansion bombs while
keeping those working."""

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, counting what each alias repeats as the file is composed."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.alias_nodes = 0
        self.sizes: dict[int, int] = {}

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        if not self.check_event(yaml.AliasEvent):
            return super().compose_node(parent, index)
        mark = self.peek_event().start_mark
        node: yaml.Node = super().compose_node(parent, index)
        if isinstance(node, yaml.CollectionNode) and node.end_mark is None:
            # The anchored node is still being composed: the alias is inside it (`&a [*a]`).
            raise ConfigError("", mark.line + 1, "recursive YAML alias (it contains itself)")
        self.alias_nodes += self._size(node)
        if self.alias_nodes > MAX_ALIAS_NODES:
            raise ConfigError("", mark.line + 1, "YAML aliases expand to more than "
                              f"{MAX_ALIAS_NODES} nodes (an alias bomb?); write the values out")
        return node

    def _size(self, node: yaml.Node) -> int:
        """Nodes under `node`, itself included, memoised: every node is counted once however
        many aliases reach it, so counting costs linear time in the file."""
        size = self.sizes.get(id(node))
        if size is None:
            size = 1
            if isinstance(node, yaml.MappingNode):
                size += sum(self._size(k) + self._size(v) for k, v in node.value)
            elif isinstance(node, yaml.SequenceNode):
                size += sum(self._size(item) for item in node.value)
            self.sizes[id(node)] = size
        return size


def _plain(node: yaml.Node, path: str, lines: LineMap, loader: _BoundedLoader) -> Any:
    """Convert a composed node to plain Python data while recording lines per path."""
    lines.lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        merged: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:  # `<<: *base` or `<<: [*a, *b]` (earlier ones win)
                sources = (value_node.value if isinstance(value_node, yaml.SequenceNode)
                           else [value_node])
                for source in sources:
                    if not isinstance(source, yaml.MappingNode):
                        raise ConfigError(path, key_node.start_mark.line + 1,
                                          "<< merges mappings only")
                    for key, value in _plain(source, path, lines, loader).items():
                        merged.setdefault(key, value)
                continue
            key = str(loader.construct_object(key_node))
            child = f"{path}.{key}" if path else key
            if key in out:
                raise ConfigError(child, key_node.start_mark.line + 1, "duplicate key")
            out[key] = _plain(value_node, child, lines, loader)
        lines.lines[path] = node.start_mark.line + 1
        return {**merged, **out} if merged else out
    if isinstance(node, yaml.SequenceNode):
        return [_plain(item, f"{path}[{i}]", lines, loader) for i, item in enumerate(node.value)]
    return loader.construct_object(node)


def load_yaml(text: str, source: str = "") -> tuple[Any, LineMap]:
    lines = LineMap()
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError("", None, f"the file is larger than {MAX_CONFIG_BYTES} bytes", source)
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}, lines
        return _plain(node, "", lines, loader), lines
    except ConfigError as exc:
        if source and not str(exc).startswith(f"{source}:"):
            raise ConfigError(exc.path, exc.line, exc.message, source) from None
        raise
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError("", mark.line + 1 if mark else None, f"invalid YAML: {exc}",
                          source) from exc
    except RecursionError:
        # `[[[[...` a few thousand deep: PyYAML's composer recurses per level.
        raise ConfigError("", None, "nested too deeply", source) from None
    finally:
        loader.dispose()


def build(cls: type[Any], data: Any, lines: LineMap, path: str = "", source: str = "") -> Any:
    """Build dataclass `cls` from plain data, checking every type."""
    return _convert(cls, data, lines, path, source)


def _fail(path: str, lines: LineMap, message: str, source: str) -> ConfigError:
    return ConfigError(path, lines.line_of(path), message, source)


def _convert(tp: Any, value: Any, lines: LineMap, path: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, lines, path, source)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise _fail(path, lines, f"must be one of {choices}, not {value!r}", source)
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise _fail(path, lines, f"must be a list, not {type(value).__name__}", source)
        item_tp = args[0] if args else Any
        items = [_convert(item_tp, v, lines, f"{path}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(path, lines, f"must be a mapping, not {type(value).__name__}", source)
        value_tp = args[1] if len(args) > 1 else Any
        return {
            str(k): _convert(value_tp, v, lines, f"{path}.{k}" if path else str(k), source)
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise _fail(path, lines, f"must be a mapping, not {type(value).__name__}", source)
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp) if f.init}
        kwargs: dict[str, Any] = {}
        for key, item in value.items():
            yaml_key = key
            name = key.replace("-", "_")
            child = f"{path}.{yaml_key}" if path else yaml_key
            if name not in fields:
                known = ", ".join(sorted(fields))
                raise _fail(child, lines, f"unknown key (known keys: {known})", source)
            kwargs[name] = _convert(hints[name], item, lines, child, source)
        for name, field in fields.items():
            if name not in kwargs and field.default is dataclasses.MISSING and (
                field.default_factory is dataclasses.MISSING
            ):
                raise _fail(path, lines, f"missing required key {name!r}", source)
        try:
            obj = tp(**kwargs)
        except (ValueError, TypeError) as exc:
            raise _fail(path, lines, str(exc), source) from exc
        check = getattr(obj, "validate", None)
        if check is not None:
            try:
                check()
            except ValueError as exc:
                raise _fail(path, lines, str(exc), source) from exc
        return obj
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _fail(path, lines, f"must be a number, not {value!r}", source)
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(path, lines, f"must be an integer, not {value!r}", source)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise _fail(path, lines, f"must be true or false, not {value!r}", source)
        return value
    if tp is str:
        if isinstance(value, bool) or value is None or isinstance(value, dict | list):
            raise _fail(path, lines, f"must be a string, not {value!r}", source)
        return str(value)
    raise _fail(path, lines, f"unsupported config type {tp!r}", source)
