"""Typed validation of plain-dict configs into dataclasses.

One small validator serves the training config here and the study file in `study.config`: every
rejection is a `ConfigError` naming the dotted key path, the bad value and what was expected, with
a close-match suggestion for misspelled keys.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Union


class ConfigError(ValueError):
    """A user's config is wrong at `path` (dotted keys); `str()` is one line for the terminal."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


def check(ok: bool, path: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(path, f"got {value!r}, expected {expected}")


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def unknown_key_message(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key {key!r} (known: {', '.join(known)}){hint}"


def describe(tp: Any) -> str:
    """A readable name for a type annotation, for error messages."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(tp) if a is not type(None))
    if origin in (list, tuple):
        return f"a list of {describe(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of {describe(typing.get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, "a value")


def parse(tp: Any, value: Any, path: str = "") -> Any:
    """`value` (plain YAML/JSON data) checked against annotation `tp`, dataclasses built."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is Literal:
        check(value in typing.get_args(tp) and not isinstance(value, bool), path, value, describe(tp))
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            check(type(None) in args, path, value, describe(tp))
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own error says more than "expected X"
            return parse(options[0], value, path)
        for arg in options:
            try:
                return parse(arg, value, path)
            except ConfigError:
                continue
        raise ConfigError(path, f"got {value!r}, expected {describe(tp)}")
    if origin is list:
        check(isinstance(value, list), path, value, describe(tp))
        (item,) = typing.get_args(tp)
        return [parse(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        check(isinstance(value, dict), path, value, describe(tp))
        _, item = typing.get_args(tp)
        return {str(k): parse(item, v, join(path, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return parse_dataclass(tp, value, path)
    if tp is bool:
        check(isinstance(value, bool), path, value, describe(tp))
        return value
    if tp is int:
        check(isinstance(value, int) and not isinstance(value, bool), path, value, describe(tp))
        return value
    if tp is float:
        check(isinstance(value, (int, float)) and not isinstance(value, bool), path, value, describe(tp))
        return float(value)
    if tp is str:
        check(isinstance(value, str), path, value, describe(tp))
        return value
    raise TypeError(f"unsupported annotation {tp!r}")  # a bug in a schema, not a user error


def parse_dataclass(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass `cls` from a mapping; missing keys take defaults, unknown keys are errors.

    After construction the dataclass's own `check(path)` method, when it has one, validates ranges
    and cross-field rules with the same error shape.
    """
    check(isinstance(data, dict), path, data, "a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise ConfigError(join(path, str(key)), unknown_key_message(str(key), list(fields)))
    values = {}
    for name, field in fields.items():
        if name in data:
            values[name] = parse(hints[name], data[name], join(path, name))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(join(path, name), f"missing, expected {describe(hints[name])}")
    obj = cls(**values)
    if hasattr(obj, "check"):
        obj.check(path)
    return obj


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)
