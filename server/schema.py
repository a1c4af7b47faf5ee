"""Settings declared once: each field's key, type, default, help and check in one place.

A section is a frozen, keyword-only dataclass whose fields come from :func:`setting`. The run
config keys (and pyproject's defaults, checked by a test), the ``pollen simulate`` flags and the
``pollen.simulate`` keywords are derived from these declarations (the habit of Hydra/pydantic
schemas; Flower shares its record keys as named constants the same way). A refused value raises
:class:`SettingError` carrying its key, so no caller maps a message back to a setting.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from functools import cache
from typing import Any

_META = "pollen.setting"

# raises ValueError (or TypeError) saying why a value is refused
Check = Callable[[Any], None]


class SettingError(ValueError):
    """A setting has a value Pollen cannot use; ``key`` is its run-config key."""

    def __init__(self, key: str, why: str) -> None:
        super().__init__(f"{key}: {why}")
        self.key = key
        self.why = why


@dataclass(frozen=True)
class Setting:
    """One declared setting, as derived from its dataclass field."""

    name: str  # the Python field / keyword name
    key: str  # the run-config key (the name with '-' for '_')
    kind: type  # bool | int | float | str
    default: Any
    help: str
    check: Check | None
    flag: str  # the ``pollen simulate`` flag ("" : not a flag, simulate sets it itself)
    cli_default: Any  # the flag's default when it differs from the run config's
    run_config: bool  # a key of ``[tool.flwr.app.config]``


def setting(
    default: Any,
    help: str,
    *,
    check: Check | None = None,
    flag: str | None = None,
    cli_default: Any = MISSING,
    run_config: bool = True,
) -> Any:
    """A dataclass field declaring one setting. ``flag``: the CLI flag when it is not
    ``--<key>`` ("" : no flag); ``cli_default``: the flag's own default, where it differs."""
    meta = {"help": help, "check": check, "flag": flag, "cli_default": cli_default}
    return field(default=default, metadata={_META: {**meta, "run_config": run_config}})


@cache
def settings_of(cls: type) -> tuple[Setting, ...]:
    """The declared settings of a section class (or of a class made of sections), in order."""
    found = []
    for spec in fields(cls):
        meta = spec.metadata.get(_META)
        if meta is None:
            continue
        key = spec.name.replace("_", "-")
        flag = f"--{key}" if meta["flag"] is None else meta["flag"]
        cli_default = spec.default if meta["cli_default"] is MISSING else meta["cli_default"]
        found.append(
            Setting(
                name=spec.name,
                key=key,
                kind=type(spec.default),
                default=spec.default,
                help=meta["help"],
                check=meta["check"],
                flag=flag,
                cli_default=cli_default,
                run_config=meta["run_config"],
            )
        )
    return tuple(found)


class Section:
    """Base of a settings section: constructing one checks every declared field."""

    def __post_init__(self) -> None:
        check_fields(self)


def defaults_of(cls: type) -> dict[str, Any]:
    """Each declared setting's default by field name (what a run that never set it used)."""
    return {entry.name: entry.default for entry in settings_of(cls)}


def typed(entry: Setting, value: Any) -> Any:
    """``value`` as the setting's type (an int is accepted for a float), or a SettingError.
    A float must be finite: NaN passes every ``<``/``>`` range check, so it is refused here."""
    if entry.kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SettingError(entry.key, f"expected a number, got {value!r}")
        if not math.isfinite(value):
            raise SettingError(entry.key, f"must be a finite number, got {value}")
        return float(value)
    if not isinstance(value, entry.kind) or (entry.kind is int and isinstance(value, bool)):
        raise SettingError(entry.key, f"expected {entry.kind.__name__}, got {value!r}")
    return value


def check_fields(section: Any) -> None:
    """Type- and range-check every declared field of ``section`` (SettingError naming it)."""
    for entry in settings_of(type(section)):
        value = typed(entry, getattr(section, entry.name))
        if entry.check is not None:
            try:
                entry.check(value)
            except (TypeError, ValueError) as err:
                raise SettingError(entry.key, str(err)) from None


def from_keys(cls: type, values: Mapping[str, Any]) -> Any:
    """Build ``cls`` from run-config keys; an unknown key is refused (a typo must not pass)."""
    entries = {e.key: e for e in settings_of(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in entries:
            known = ", ".join(sorted(entries))
            raise SettingError(key, f"unknown key; known keys: {known}")
        kwargs[entries[key].name] = typed(entries[key], value)
    return cls(**kwargs)


def at_least(low: float) -> Check:
    def check(value: float) -> None:
        if value < low:
            raise ValueError(f"must be >= {low}, got {value}")

    return check


def within(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Check:
    """``value`` in the interval; open ends written ``(`` / ``)``."""

    def check(value: float) -> None:
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (above and below):
            interval = (
                f"{'(' if low_open else '['}{_num(low)}, {_num(high)}{')' if high_open else ']'}"
            )
            raise ValueError(f"must be in {interval}, got {value}")

    return check


def above(low: float) -> Check:
    def check(value: float) -> None:
        if not value > low:
            raise ValueError(f"must be > {low}, got {value}")

    return check


def _num(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def one_of(*choices: Any) -> Check:
    def check(value: Any) -> None:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(map(str, choices))}, got {value!r}")

    return check
