"""
Configuration: one pure function from the environment (plus twistd options) to a frozen `Config`.

Every variable of DESIGN §1.1 and every operational knob is read here and nowhere else, from the
table in `knobs`; the rest of the code receives a `Config` (`sections`). Error messages name the
variable and the problem and never echo a value that may be secret.
"""

from __future__ import annotations

import os
from types import MappingProxyType
from typing import Any, Mapping

from smoltbot.config.knobs import DEFAULT_HEARTBEAT_URL, DEFAULT_UPSTREAMS, KNOBS, LOG_LEVELS, ROLES, Knob, Required
from smoltbot.config.sections import SECTIONS, Config

__all__ = [
    "Config",
    "ConfigError",
    "DEFAULT_HEARTBEAT_URL",
    "DEFAULT_UPSTREAMS",
    "EnvValidationError",
    "LOG_LEVELS",
    "ROLES",
    "config_from_environment",
    "load_config",
]


class ConfigError(Exception):
    """The environment holds a value the daemon cannot run with."""


class EnvValidationError(ConfigError):
    """Required environment variables are missing; the message lists every one of them."""

    def __init__(self, missing: list[str]) -> None:
        self.missing = list(missing)
        lines = "\n".join(f"  {name}" for name in self.missing)
        super().__init__(
            f"Missing required environment variables:\n{lines}\n\nSet them in your .env or deployment configuration."
        )


def load_config(environ: Mapping[str, str], overrides: Mapping[str, object] | None = None) -> Config:
    """
    Build the configuration from `environ` (usually `os.environ`) and twistd option overrides.

    `overrides` may hold `role`, `port`, `host` and `listen` as given on the command line; they
    win over the environment. Raises `EnvValidationError` when required variables are missing,
    else `ConfigError` listing every invalid value.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    env = {k: v for k, v in environ.items() if v != ""}
    if "DATABASE_URL" not in env and env.get("SUPABASE_URL", "").startswith(("postgres://", "postgresql://")):
        env["DATABASE_URL"] = env["SUPABASE_URL"]
    problems: list[str] = []
    values: dict[str, object] = {}
    for knob in KNOBS:
        if knob.alias_for is None:
            values[knob.target] = _read(knob, environ, env, overrides, values, problems)

    missing = [k.variable for k in KNOBS if isinstance(k.default, Required) and k.variable not in env and k.default.applies(values)]
    if missing:
        raise EnvValidationError(missing)
    if problems:
        raise ConfigError("Invalid environment variables:\n" + "\n".join(f"  {p}" for p in problems))
    return _assemble(values)


def _read(
    knob: Knob,
    environ: Mapping[str, str],
    env: Mapping[str, str],
    overrides: Mapping[str, object],
    values: Mapping[str, object],
    problems: list[str],
) -> object:
    """One knob's value: its option, else its variable, else its default; a bad value is noted in `problems`."""
    raw = overrides.get(knob.option) if knob.option else None
    if raw is None and knob.empty_is_a_value and environ.get(knob.variable) == "":
        return knob.empty
    if raw is None:
        raw = env.get(knob.variable)
    if raw is not None:
        try:
            return knob.parse(str(raw))
        except ValueError as e:
            problems.append(f"{knob.variable}: {e}")
    if knob.required:
        return None
    if knob.derived:
        return knob.default(values, env)  # type: ignore[operator]
    return knob.default


def _assemble(values: Mapping[str, object]) -> Config:
    """`Config` from the values read, keyed by target (`field`, `section.field` or `section.field.key`)."""
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for target, value in values.items():
        name, _, rest = target.partition(".")
        if not rest:
            top[name] = value
        elif "." in rest:
            field, _, key = rest.partition(".")
            sections[name].setdefault(field, {})[key] = value
        else:
            sections[name][rest] = value
    for name, cls in SECTIONS.items():
        fields = {k: MappingProxyType(v) if isinstance(v, dict) else v for k, v in sections[name].items()}
        top[name] = cls(**fields)
    return Config(**top)


def config_from_environment(overrides: Mapping[str, object] | None = None) -> Config:
    """`load_config` over this process's environment."""
    return load_config(os.environ, overrides)
