"""Typed run configs: YAML files + ``key.sub=value`` overrides, validated before anything runs.

A config is a tree of dataclasses. :func:`load_config` reads a YAML file into it, applies dotted
overrides from the command line, and rejects (with ``ValueError``) an unknown key, naming the
valid ones, or a value of the wrong type, naming the key and the expected type.

A file may name another with ``base: other.yaml`` (relative to the file): it is read first and the
file is merged onto it (mappings key by key, lists and scalars replaced), so a variant of a recipe
(a shorter demo, a study) states only what it changes. Bases chain; a cycle is an error.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

C = TypeVar("C")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked (and int -> float widened) against the annotation ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ValueError:
                continue
        raise ValueError(f"config key {key!r}: expected {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {key!r}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"config key {key!r}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return config_from_dict(tp, value, prefix=key + ".")
    if tp is Any:
        return value
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)  # YAML's true is no number
    if tp is float and is_number:
        return float(value)
    if tp is float and isinstance(value, str):  # PyYAML (YAML 1.1) reads 3e-4 as a string
        try:
            return float(value)
        except ValueError:
            pass
    ok = is_number and isinstance(value, int) if tp is int else isinstance(value, tp)
    if not ok:
        raise ValueError(f"config key {key!r}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    return value


def config_from_dict(cls: type[C], data: dict[str, Any] | None, prefix: str = "") -> C:
    """Build dataclass ``cls`` from a (nested) dict; unknown keys and wrong types raise ValueError."""
    data = data or {}
    if not isinstance(data, dict):
        raise ValueError(f"config section {prefix.rstrip('.') or '<root>'!r}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown config key {prefix + unknown[0]!r}; valid keys{' in ' + prefix.rstrip('.') if prefix else ''}: "
            f"{', '.join(sorted(fields))}"
        )
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in data.items()}
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """data['a']['b'] = value for 'a.b', creating intermediate mappings."""
    *parents, leaf = dotted.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {dotted!r}: {p!r} is not a config section")
    node[leaf] = value


def parse_overrides(overrides: Sequence[str]) -> list[tuple[str, Any]]:
    """['optim.lr=3e-4', 'data.train=[a,b]'] -> [('optim.lr', 0.0003), ('data.train', ['a', 'b'])] (YAML values)."""
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form key.sub=value")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ValueError(f"override {item!r}: value is not valid YAML ({e.problem})") from e
        parsed.append((key.strip(), value))
    return parsed


def merge_configs(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``overlay`` on ``base``: mappings merge key by key (recursively), anything else replaces."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = merge_configs(merged[key], value)
        merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"config file {path}: top level must be a mapping")
    return data


def read_config_file(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """YAML ``path`` as a dict, merged onto its ``base:`` chain (resolved, without ``base``)."""
    path = Path(path)
    if path.resolve() in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path.resolve()))
        raise ValueError(f"config file {path}: its base chain is a cycle ({cycle})")
    data = _read_yaml(path)
    if "base" not in data:
        return data
    base = data.pop("base")
    if not isinstance(base, str) or not base:
        raise ValueError(f"config file {path}: 'base' must name a YAML file, got {base!r}")
    base_path = path.parent / base
    if not base_path.is_file():
        raise FileNotFoundError(f"config file {path}: its base {base!r} ({base_path}) does not exist")
    return merge_configs(read_config_file(base_path, (*_chain, path.resolve())), data)


def load_config(cls: type[C], path: str | Path | None = None, overrides: Sequence[str] = ()) -> C:
    """Read YAML ``path`` (optional; merged onto its ``base:`` chain), apply ``overrides``, return a valid ``cls``."""
    data = read_config_file(path) if path is not None else {}
    for key, value in parse_overrides(overrides):
        set_dotted(data, key, value)
    return config_from_dict(cls, data)


def config_to_dict(config: Any) -> dict[str, Any]:
    """The config as plain YAML-able data (for saving the resolved config with a run)."""
    return dataclasses.asdict(config)


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
