"""params.yaml loading into frozen, validated dataclasses.

``params.yaml`` has one section per stage.  :func:`build_config` turns a section (a dict)
into a frozen, keyword-only dataclass: unknown keys, wrong types and values rejected by the
class's ``__post_init__`` raise ``ValueError`` naming the dotted field (``clean.quality.min_words``)
and the value.  Nested dataclass fields are built recursively.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import hashlib
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
DEFAULT_PARAMS = Path(__file__).resolve().parent.parent / "params.yaml"


class FrozenDict(dict):
    """A read-only dict for mapping fields of frozen configs; unlike ``MappingProxyType``
    it pickles (Spark ships configs to executors) and compares equal to a plain dict."""

    def _readonly(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("config mappings are read-only; build a new config with dataclasses.replace")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _readonly  # type: ignore[assignment]
    __ior__ = _readonly  # type: ignore[assignment]

    def __hash__(self) -> int:  # frozen dataclasses hash their fields
        return hash(tuple(sorted(self.items(), key=repr)))

    def __reduce__(self):
        return (FrozenDict, (dict(self),))


def load_params(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Read params.yaml (the repository's own when ``path`` is None) as a dict."""
    path = Path(path) if path else DEFAULT_PARAMS
    if not path.is_file():
        raise FileNotFoundError(f"params file {str(path)!r} does not exist")
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of sections at the top level")
    return data


def params_hash(section: Any) -> str:
    """A short, stable hash of a params section (for manifests and caches)."""
    blob = json.dumps(section, sort_keys=True, default=str, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def build_config(cls: type[T], data: dict[str, Any] | None, where: str) -> T:
    """Build dataclass ``cls`` from ``data``; ``where`` is the dotted name used in errors."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__} {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except ValueError as exc:
        msg = str(exc)
        raise ValueError(msg if msg.startswith(where) else f"{where}: {msg}") from None
    except TypeError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return build_config(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{where}: must be one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, collections.abc.Mapping) or hint in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        if len(args) == 2:
            return FrozenDict({k: _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()})
        return FrozenDict(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def config_to_dict(config: Any) -> Any:
    """A plain, JSON-ready view of a (nested) config dataclass."""
    if dataclasses.is_dataclass(config):
        return {f.name: config_to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (types.MappingProxyType, dict)):
        return {k: config_to_dict(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [config_to_dict(v) for v in config]
    return config
