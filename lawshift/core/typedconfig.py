"""Typed config: a dataclass built from a YAML mapping, rejecting unknown keys, wrong types and broken rules.

    params = build(Params, yaml.safe_load(text), "", "params.yaml")

Nested dataclasses, dicts of them, lists and optionals are checked field by field; an unknown key suggests the
closest name; a dataclass's `problems()` (its rules) run once it is built. Every failure is one `InputError`
naming the file and the dotted key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

from lawshift.core.files import InputError


def check_type(value: Any, tp: Any, where: str, path: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise InputError(path, f"expected a mapping, got {type(value).__name__}", field=where)
        return build(tp, value, where, path)
    if origin is dict:
        _, item = typing.get_args(tp)
        if not isinstance(value, dict):
            raise InputError(path, f"expected a mapping, got {type(value).__name__}", field=where)
        return {str(k): check_type({} if v is None else v, item, f"{where}.{k}", path) for k, v in value.items()}
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise InputError(path, f"expected a list, got {type(value).__name__}", field=where)
        return [check_type(v, item, f"{where}[{i}]", path) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return check_type(value, args[0], where, path)
    # bool is an int subclass in Python: keep `true` out of int fields and ints out of bool fields.
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, tp)
    if not ok:
        raise InputError(path, f"expected {tp.__name__}, got {type(value).__name__} {value!r}", field=where)
    return value


def build(cls: type, raw: dict, prefix: str, path: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise InputError(path, f"unknown key{hint}", field=where)
        kwargs[key] = check_type(value, hints[key], where, path)
    obj = cls(**kwargs)
    for key, message in obj.problems() if hasattr(obj, "problems") else ():
        raise InputError(path, message, field=f"{prefix}.{key}" if prefix else key)
    return obj
