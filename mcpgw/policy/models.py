"""What a `policies/*.toml` file means once parsed. All files in the folder are merged.

Frozen and strict like the server config: a misspelt key in a security policy must be an
error, never a rule that silently does nothing.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour|day)s?\s*$")
UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Defaults(_Model):
    effect: Literal["deny", "allow"] = Field(default="deny", description="when no role grants a name")


class Match(_Model):
    """A principal matches a role when ANY listed value matches (globs for subjects, clients, groups)."""

    scopes: tuple[str, ...] = ()
    subjects: tuple[str, ...] = ()
    clients: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _something(self) -> Match:
        if not (self.scopes or self.subjects or self.clients or self.groups):
            raise ValueError("match needs at least one of scopes, subjects, clients, groups "
                             "(use subjects = [\"*\"] for everyone)")
        return self


class Role(_Model):
    name: str = Field(min_length=1)
    match: Match
    allow: tuple[str, ...] = Field(default=(), description="globs over exported tool/prompt names and resource URIs")
    deny: tuple[str, ...] = Field(default=(), description="deny always wins over allow")
    description: str = ""


class Condition(_Model):
    """Conditions on one argument; all given must hold for the condition to match."""

    equals: Any = None
    in_: tuple[Any, ...] | None = Field(default=None, alias="in")
    not_in: tuple[Any, ...] | None = None
    pattern: str | None = Field(default=None, description="regular expression the (string) value must match fully")
    max: float | None = None
    min: float | None = None
    max_length: int | None = Field(default=None, ge=0)
    min_length: int | None = Field(default=None, ge=0)
    present: bool | None = Field(default=None, description="true: the argument must be given; false: absent")

    @field_validator("pattern")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _something(self) -> Condition:
        if not self.model_fields_set:
            raise ValueError("an empty condition; use equals, in, not_in, pattern, max, min, max_length, "
                             "min_length or present")
        return self


class Rule(_Model):
    """An argument-level rule for the tools whose exported names match `tool` (a glob)."""

    tool: str = Field(min_length=1)
    when: dict[str, Condition] = Field(default_factory=dict, description="argument path (a.b.c) -> condition")
    effect: Literal["allow", "deny", "approve"]
    roles: tuple[str, ...] = Field(default=(), description="only for principals in these roles (default: everyone)")
    name: str | None = None
    message: str | None = Field(default=None, description="shown to the agent when the rule denies")


class Limit(_Model):
    """A rate limit on the tools matching `tools`, for the principals it names."""

    rate: str
    tools: tuple[str, ...] = ("*",)
    roles: tuple[str, ...] = ()
    subjects: tuple[str, ...] = ()
    clients: tuple[str, ...] = ()
    per: Literal["principal", "role", "global", "upstream"] = "principal"
    name: str | None = None

    @field_validator("rate")
    @classmethod
    def _rate(cls, value: str) -> str:
        match = RATE_RE.match(value)
        if not match or int(match.group(1)) < 1:
            raise ValueError(f"rate must look like N/second, N/minute, N/hour or N/day with N >= 1, got {value!r}")
        return value

    @property
    def per_window(self) -> tuple[int, int]:
        """(requests, window seconds)."""
        match = RATE_RE.match(self.rate)
        assert match is not None
        return int(match.group(1)), UNIT_SECONDS[match.group(2)]


class PolicyFile(_Model):
    defaults: Defaults | None = None
    roles: tuple[Role, ...] = ()
    rules: tuple[Rule, ...] = ()
    limits: tuple[Limit, ...] = ()


class PolicySet(_Model):
    """The merged policy of a folder. `sources` says which file each role/rule/limit came from."""

    defaults: Defaults = Defaults()
    roles: tuple[Role, ...] = ()
    rules: tuple[Rule, ...] = ()
    limits: tuple[Limit, ...] = ()
    files: tuple[str, ...] = ()
    present: bool = Field(default=False, description="false: no policies folder; everything is allowed")
