"""Frozen, validated configuration dataclasses, filled from `ros__parameters` YAML or a node.

Each parameter is declared exactly once, as a dataclass field made with `param()`, which
carries its default, its description and its check. Nodes declare ROS parameters from the
same fields (`wmpc.nodes.common.declare_config`), and plain-Python users call
`load_config()`; both end in `build_config()`, which validates and names the bad parameter.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from wmpc.errors import WmpcError

T = TypeVar("T")
Check = Callable[[Any], str | None]


class ConfigError(WmpcError, ValueError):
    """A parameter or parameter file is invalid; the message names the parameter."""


def param(default: Any, description: str, check: Check | None = None) -> Any:
    """Declare a config field with its default, a description and an optional check.

    `check(value)` returns None when the value is fine, else the reason it is not.
    Lists are stored as tuples so the dataclass stays immutable.
    """
    meta = {"description": description, "check": check}
    if isinstance(default, list):
        default = tuple(default)
    return dataclasses.field(default=default, metadata=meta)


# ---- checks, reused across config classes --------------------------------------------------


def positive(value: Any) -> str | None:
    """Value must be a finite number > 0."""
    if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        return "must be a finite number > 0"
    return None


def non_negative(value: Any) -> str | None:
    """Value must be a finite number >= 0."""
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return "must be a finite number >= 0"
    return None


def one_of(*allowed: Any) -> Check:
    """Value must be one of `allowed`."""

    def check(value: Any) -> str | None:
        return None if value in allowed else f"must be one of {list(allowed)}"

    return check


def each_one_of(*allowed: Any) -> Check:
    """Value is a non-empty sequence whose items are all in `allowed`."""

    def check(value: Any) -> str | None:
        if not value:
            return "must not be empty"
        bad = [v for v in value if v not in allowed]
        return f"has unknown item(s) {bad}; allowed: {list(allowed)}" if bad else None

    return check


def length(n: int) -> Check:
    """Value is a sequence of exactly n finite numbers."""

    def check(value: Any) -> str | None:
        if len(value) != n:
            return f"must have {n} numbers, got {len(value)}"
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in value):
            return "must contain only finite numbers"
        return None

    return check


def existing_file(value: Any) -> str | None:
    """Value is a path to an existing file (empty string is allowed: not configured)."""
    if value and not Path(value).is_file():
        return f"file not found: {value}"
    return None


# ---- building ----------------------------------------------------------------------------


def _coerce(value: Any, default: Any) -> Any:
    """Match YAML/ROS types to the default's type (int -> float, list -> tuple)."""
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, tuple) and isinstance(value, list | tuple):
        if default and isinstance(default[0], float):
            return tuple(float(v) if isinstance(v, int) else v for v in value)
        return tuple(value)
    return value


def build_config(cls: type[T], values: Mapping[str, Any], *, source: str = "") -> T:
    """Make a frozen `cls` from `values`; unknown keys and failed checks raise ConfigError."""
    where = f" in {source}" if source else ""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown parameter(s) {unknown}{where} for {cls.__name__}; known: {sorted(fields)}"
        )
    kwargs = {}
    for name, f in fields.items():
        value = _coerce(values[name], f.default) if name in values else f.default
        if f.default is not dataclasses.MISSING and value is not None:
            expected = type(f.default)
            if isinstance(f.default, float) and isinstance(value, int | float):
                pass
            elif not isinstance(value, expected) or isinstance(value, bool) != isinstance(
                f.default, bool
            ):
                raise ConfigError(
                    f"parameter '{name}'{where} = {value!r}: expected {expected.__name__}"
                )
        check = f.metadata.get("check")
        problem = check(value) if check else None
        if problem:
            raise ConfigError(f"parameter '{name}'{where} = {value!r}: {problem}")
        kwargs[name] = value
    return cls(**kwargs)


def read_parameter_file(path: str | Path, node_name: str) -> dict[str, Any]:
    """The `ros__parameters` of `node_name` in a standard ROS 2 parameter YAML file.

    Keys for `/**` (all nodes) are merged first, then the node's own keys override them.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"parameter file not found: {path}")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"parameter file {path} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"parameter file {path} must map node names to ros__parameters")
    merged: dict[str, Any] = {}
    for key in ("/**", node_name, "/" + node_name.lstrip("/")):
        section = doc.get(key)
        if section is None:
            continue
        if not isinstance(section, dict) or "ros__parameters" not in section:
            raise ConfigError(f"{path}: section '{key}' has no 'ros__parameters' mapping")
        merged.update(section["ros__parameters"] or {})
    return merged


def load_config(cls: type[T], path: str | Path | None, node_name: str, **overrides: Any) -> T:
    """Build `cls` from a parameter file's section for `node_name`, then keyword overrides."""
    values = read_parameter_file(path, node_name) if path else {}
    known = {f.name for f in dataclasses.fields(cls)}
    # A shared file may hold parameters of other concerns under /**; keep only ours there.
    if path:
        shared = read_parameter_file(path, "__none__")
        values = {k: v for k, v in values.items() if k in known or k not in shared}
    values.update(overrides)
    return build_config(cls, values, source=f"{path} [{node_name}]" if path else "")


def describe(cls: type) -> list[tuple[str, Any, str]]:
    """(name, default, description) for each parameter, for --help and declaration."""
    return [
        (f.name, f.default, f.metadata.get("description", "")) for f in dataclasses.fields(cls)
    ]
