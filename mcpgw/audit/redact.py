"""Redaction: what never reaches the audit store (or an export) in clear.

Applied to a record's arguments and error text before it is hashed and written, so the stored
record, its hash and every export agree. Three rules, in this order:
1. values under a key that names a secret (`password`, `api_key`, `token`...; strings and whole
   objects, not numbers: `max_tokens = 100` stays);
2. string values, anywhere, that contain something shaped like a credential (bearer tokens,
   JWTs, `sk-...`, GitHub, AWS, Slack, Google keys, PEM private keys, a URL's password) or one
   of the gateway's own configured secrets (upstream `env` and `headers` values);
3. argument paths configured per tool in `[audit.redact.tools]`.
"""

from __future__ import annotations

import copy
import fnmatch
import re
from collections.abc import Iterable
from typing import Any

from mcpgw.config.models import AuditRedaction, Config

SECRET_KEYS = (
    r"passw(?:or)?d|passphrase|secret|token|api[-_]?key|apikey|authorization|credential|private[-_]?key"
    r"|access[-_]?key|cookie|session[-_]?id"
)
SECRET_VALUES = (
    r"(?i:bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}",
    r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",  # JWT
    r"\bsk-[A-Za-z0-9_-]{16,}",  # OpenAI / Anthropic style keys
    r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})",
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    r"\bxox[abprs]-[A-Za-z0-9-]{10,}",
    r"\bAIza[0-9A-Za-z_-]{35}",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
    r"(?<=://)[^/\s:@]+:[^@\s/]+(?=@)",  # user:password@ in a URL
)
MIN_SECRET_LENGTH = 6
"""Configured values shorter than this (TZ = "UTC") are settings, not secrets."""


def configured_secrets(config: Config) -> list[str]:
    """Values the gateway holds on the agent's behalf and must never write down: every `env` and
    `headers` value, and every value under a key that names a secret (`token`, `password`,
    `client_secret`, an auth table's `value`...), wherever it sits in the config."""
    found: set[str] = set()
    secret_key = re.compile(f"(?i:{SECRET_KEYS})")

    def add(value: Any) -> None:
        if isinstance(value, str):
            raw = str.__str__(value)  # a str subclass may print a marker instead of itself
            found.add(raw)
            scheme, _, credential = raw.partition(" ")
            if credential and scheme.lower() in ("bearer", "basic", "token"):
                found.add(credential)

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("env", "headers") and isinstance(item, dict):
                    for leaf in item.values():
                        add(leaf)
                elif isinstance(key, str) and not key.endswith("_url") and (key == "value" or secret_key.search(key)):
                    add(item)
                else:
                    walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    walk(config.model_dump())
    return sorted((v for v in found if len(v) >= MIN_SECRET_LENGTH), key=len, reverse=True)


class Redactor:
    """Compiled once per config snapshot; used by the audit writer's thread, never per request."""

    def __init__(self, settings: AuditRedaction, secrets: Iterable[str] = ()) -> None:
        self.marker = settings.marker
        keys = "|".join([SECRET_KEYS, *settings.keys])
        self._keys = re.compile(f"(?i:{keys})")
        values = [*(re.escape(s) for s in secrets), *SECRET_VALUES, *settings.patterns]
        self._values = re.compile("|".join(f"(?:{v})" for v in values))
        self._tools = [(glob, [tuple(p.split(".")) for p in paths]) for glob, paths in settings.tools.items()]
        self._paths_of: dict[str, list[tuple[str, ...]]] = {}

    def text(self, value: str) -> str:
        return self._values.sub(self.marker, value)

    def arguments(self, target: str, arguments: Any) -> Any:
        """`arguments` with secrets replaced: the same object if nothing needed replacing (so the
        caller can reuse its serialisation), otherwise a copy; the original is never changed."""
        clean = self._walk(arguments)
        paths = self._paths(target)
        if paths and clean is arguments:
            clean = copy.deepcopy(arguments)
        for path in paths:
            clean = self._apply(clean, path)
        return clean

    def _paths(self, target: str) -> list[tuple[str, ...]]:
        paths = self._paths_of.get(target)
        if paths is None:
            paths = [p for glob, ps in self._tools if fnmatch.fnmatchcase(target, glob) for p in ps]
            if len(self._paths_of) < 10_000:
                self._paths_of[target] = paths
        return paths

    def _walk(self, value: Any) -> Any:
        """A redacted copy of `value`, or `value` itself when nothing in it needs redacting."""
        if isinstance(value, str):
            return self._values.sub(self.marker, value)
        if isinstance(value, dict):
            out = {}
            changed = False
            for key, item in value.items():
                if isinstance(key, str) and isinstance(item, str | dict | list) and self._keys.search(key):
                    out[key] = self.marker
                    changed = True
                else:
                    out[key] = clean = self._walk(item)
                    changed = changed or (clean is not item and clean != item)
            return out if changed else value
        if isinstance(value, list | tuple):
            items = [self._walk(item) for item in value]
            return items if any(a is not b and a != b for a, b in zip(items, value, strict=True)) else value
        return value

    def _apply(self, value: Any, path: tuple[str, ...]) -> Any:
        if not path:
            return self.marker
        head, rest = path[0], path[1:]
        if isinstance(value, dict):
            for key in list(value):
                if head == "*" or key == head:
                    value[key] = self._apply(value[key], rest)
        elif isinstance(value, list):
            for index in range(len(value)):
                if head == "*" or head == str(index):
                    value[index] = self._apply(value[index], rest)
        return value
