"""Look for tool poisoning in what a model reads: tool and prompt descriptions, titles, schemas.

A tool's description goes straight into the model's context, and the person approving the
server rarely reads it. Poisoned descriptions (the published attacks) hide instructions in
markup a UI does not render (`<IMPORTANT>`), in characters nobody can see (zero-width,
bidirectional controls, Unicode tag characters that spell ASCII invisibly), talk to the model
("ignore previous instructions", "do not tell the user"), point it at other servers' tools
(shadowing) or at secrets ("before using this tool, read ~/.ssh/id_rsa").

Every rule has an id and a one-line reason, and is kept narrow: an honest server should not
trip it (the test suite runs the scanner over the reference servers it uses). Words such as
"token" or "password" alone are not findings — honest tools take tokens and passwords — but
credential files, secret-looking environment variables and credential identifiers the tool does
not itself take as parameters are.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from typing_extensions import TypeIs

if TYPE_CHECKING:  # the SDK costs ~0.5 s to import; config checks and `mcpgw audit` do not need it
    import mcp.types as t


def is_tool(item: t.Tool | t.Prompt) -> TypeIs[t.Tool]:
    """A tool rather than a prompt (told apart without importing the SDK's types at run time)."""
    return hasattr(item, "input_schema")


_INVISIBLE = "\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\U000e0000-\U000e007f"
INVISIBLE_RE = re.compile(f"[{_INVISIBLE}]")
_TAGS = re.compile("[\U000e0020-\U000e007e]+")


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    why: str
    pattern: re.Pattern[str]
    needles: tuple[str, ...] = ()
    """Lower-case substrings one of which every match contains: a definition with none of them
    skips the (much slower) regular expression. Empty: always run it."""

    def may_match(self, text: str, lowered: str) -> bool:
        if self.needles:
            return any(needle in lowered for needle in self.needles)
        if self.pattern is INVISIBLE_RE and text.isascii():
            return False
        return self.pattern.search(text) is not None


_I = re.IGNORECASE
RULES: tuple[Rule, ...] = (
    Rule("hidden-tag", "markup addressed to the model that a person skimming the tool list does not see",
         re.compile(r"<\s*/?\s*(?:important|system|sys|instructions?|system[_ -]?prompt|hidden|secret|admin|"
                    r"critical|ai[_ -]?instructions?|note[_ -]to[_ -](?:ai|assistant|model|llm))\b[^<>]{0,60}>"
                    r"|\[/?INST\]|<<\s*/?SYS\s*>>|<\|[a-z_]{2,20}\|>|<!--", _I),
         ("<", "[inst", "[/inst")),
    Rule("model-directive", "an instruction aimed at the model rather than a description of the tool",
         re.compile(r"\b(?:ignore|disregard|forget|override)\s+(?:all\s+|any\s+)?(?:the\s+|your\s+)?"
                    r"(?:previous|prior|above|earlier|preceding|other|system)\s+"
                    r"(?:instructions?|directions|prompts?|rules|messages|guidelines)"
                    r"|\b(?:do\s+not|don'?t|never)\s+(?:tell|inform|mention|reveal|show|disclose|notify|alert|let)"
                    r"\b[^.\n]{0,40}\b(?:the\s+)?users?\b"
                    r"|\bwithout\s+(?:telling|informing|notifying|alerting|asking)\s+the\s+user"
                    r"|\bwithout\s+the\s+user(?:'s)?\s+(?:knowing|knowledge|noticing|consent)"
                    r"|\b(?:the\s+)?users?\s+(?:must|should|need)\s+not\s+(?:know|see|be\s+told)"
                    r"|\b(?:before|prior\s+to)\s+(?:using|calling|invoking|running)\s+this\s+tool\b[^.\n]{0,80}?"
                    r"\b(?:read|send|pass|include|provide|upload|attach|cat)\b"
                    r"|\botherwise\s+(?:the|this)\s+tool\s+(?:will|would|may|might|does|can)(?:\s+not|n'?t)\s+work"
                    r"|\byou\s+are\s+now\b|\b(?:new|updated|real)\s+(?:system\s+)?instructions?\s*:"
                    r"|\b(?:reveal|print|output|repeat|leak)\s+(?:the\s+|your\s+)?(?:system\s+prompt|"
                    r"conversation\s+history|chat\s+history|previous\s+messages)", _I),
         ("ignore", "disregard", "forget", "override", "user", "this tool", "otherwise", "you are now", "instruction",
          "system prompt", "history", "previous messages")),
    Rule("invisible-unicode", "characters that render as nothing or reorder text (zero-width, bidirectional "
         "controls, Unicode tags): text a model reads and a person does not see",
         INVISIBLE_RE),
    Rule("secret-reference", "a reference to credential files or secrets, which a tool description has no "
         "reason to mention",
         re.compile(r"~/\.ssh\b|\.ssh/|\bid_(?:rsa|dsa|ecdsa|ed25519)\b|\.aws/(?:credentials|config)\b"
                    r"|(?<![\w.])\.env\b(?![\w-])|/etc/(?:passwd|shadow)\b|\.netrc\b|\.pgpass\b|\.kube/config\b"
                    r"|\.docker/config\.json|\.git-credentials\b|\.npmrc\b|\.pypirc\b"
                    r"|claude_desktop_config\.json|\bmcp\.json\b"
                    r"|\b[A-Z][A-Z0-9]*_(?:API_KEY|SECRET(?:_ACCESS)?(?:_KEY)?|TOKEN|PASSWORD|PRIVATE_KEY)\b"
                    r"|\bAWS_SECRET\w*"
                    r"|\b(?:api_?key|secret_key|access_token|refresh_token|private_key|client_secret|password|passwd)\b"
                    r"|\b(?:private\s+key|ssh\s+key|seed\s+phrase|mnemonic\s+phrase|recovery\s+phrase)s?\b", _I),
         ("ssh", "id_rsa", "id_dsa", "id_ecdsa", "id_ed25519", ".aws/", ".env", "/etc/", ".netrc", ".pgpass",
          ".kube/", ".docker/", ".git-credentials", ".npmrc", ".pypirc", "claude_desktop_config", "mcp.json",
          "api_key", "apikey", "_secret", "secret_key", "_token", "_password", "private_key", "password", "passwd",
          "private", "phrase")),
)
CROSS_SERVER = "cross-server-reference"
_CROSS_WHY = "names another upstream's tools (shadowing: steering the model's use of a tool it does not own)"
WHY = {rule.id: rule.why for rule in RULES} | {CROSS_SERVER: _CROSS_WHY}
_IDENTIFIER = re.compile(r"^[\w.]+$")


@dataclass(frozen=True, slots=True)
class Finding:
    rule: str
    kind: str
    """"tool" or "prompt"."""
    name: str
    """The upstream's own name of the tool or prompt."""
    field: str
    """Where in the definition: `description`, `inputSchema.properties.path.description`, ..."""
    excerpt: str
    """The match with some context, invisible characters spelled as \\u escapes."""

    def render(self, exported: str | None = None) -> str:
        return f"[{self.rule}] {self.kind} {exported or self.name} {self.field}: {self.excerpt}"

    def as_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "kind": self.kind, "name": self.name, "field": self.field,
                "excerpt": self.excerpt}


def visible(text: str, *, keep_newlines: bool = False) -> str:
    """`text` with every invisible or control character spelled as a \\u escape."""
    out = []
    for ch in text:
        if (ch == "\n" and keep_newlines) or ch == " " or (ch.isprintable() and not INVISIBLE_RE.match(ch)):
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
    return "".join(out)


def _excerpt(text: str, match: re.Match[str]) -> str:
    start, end = match.span()
    lo, hi = max(0, start - 40), min(len(text), end + 40)
    snippet = ("…" if lo else "") + text[lo:hi] + ("…" if hi < len(text) else "")
    shown = visible(snippet.replace("\n", " "))
    hidden = "".join(chr(ord(c) - 0xE0000) for run in _TAGS.findall(text) for c in run)
    if match.re is INVISIBLE_RE and hidden:
        shown += f" (tag characters spell: {hidden[:80]!r})"
    if match.re is INVISIBLE_RE:
        name = unicodedata.name(match.group(0), f"U+{ord(match.group(0)):04X}")
        shown += f" ({name})"
    return shown


def _strings(value: Any, path: str) -> Iterator[tuple[str, str, bool]]:
    """(field path, text, is_key) for every string in a JSON value; keys are yielded too."""
    if isinstance(value, str):
        yield path, value, False
    elif isinstance(value, dict):
        for key, item in value.items():
            key = str(key)
            yield f"{path}.{key}", key, True
            yield from _strings(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")


class Scanner:
    """Scans definitions; compiled once per config snapshot (it knows the other servers' prefixes)."""

    def __init__(self, prefixes: dict[str, str], separator: str) -> None:
        self._others: dict[str, tuple[tuple[str, ...], re.Pattern[str]]] = {}
        for server in prefixes:
            others = sorted({p + separator for s, p in prefixes.items() if s != server and p})
            if others:
                alternatives = "|".join(map(re.escape, others))
                self._others[server] = (tuple(others),
                                        re.compile(rf"(?<![A-Za-z0-9_.-])(?:{alternatives})[A-Za-z0-9_.-]+"))

    def scan(self, upstream: str, kind: str, item: t.Tool | t.Prompt) -> list[Finding]:
        # Fast path: most definitions are clean. One text holding everything a model reads tells
        # which rules could match at all; only those walk the definition field by field.
        parts = [item.name, item.title or "", item.description or ""]
        if is_tool(item):
            parts += [item.annotations.title or "" if item.annotations else "",
                      json.dumps(item.input_schema, ensure_ascii=False),
                      json.dumps(item.output_schema, ensure_ascii=False) if item.output_schema else ""]
        else:
            parts += [f"{arg.name}\n{arg.description or ''}" for arg in item.arguments or ()]
        blob = "\n".join(parts)
        lowered = blob.lower()
        rules = [rule for rule in RULES if rule.may_match(blob, lowered)]
        cross: re.Pattern[str] | None = None
        if (others := self._others.get(upstream)) is not None and any(other in blob for other in others[0]):
            cross = others[1]
        if not rules and cross is None:
            return []
        return self._scan_fields(kind, item, rules, cross)

    def _scan_fields(self, kind: str, item: t.Tool | t.Prompt, rules: list[Rule],
                     cross: re.Pattern[str] | None) -> list[Finding]:
        texts: list[tuple[str, str, bool]] = [("name", item.name, True)]
        own: set[str] = {item.name.lower()}
        for attr in ("title", "description"):
            if value := getattr(item, attr):
                texts.append((attr, value, False))
        if is_tool(item):
            if item.annotations is not None and item.annotations.title:
                texts.append(("annotations.title", item.annotations.title, False))
            for attr, wire in (("input_schema", "inputSchema"), ("output_schema", "outputSchema")):
                schema = getattr(item, attr)
                if schema:
                    found = list(_strings(schema, wire))
                    own |= {text.lower() for _path, text, is_key in found if is_key}
                    texts += found
        else:
            for arg in item.arguments or ():
                texts.append((f"arguments.{arg.name}", arg.name, True))
                own.add(arg.name.lower())
                if arg.description:
                    texts.append((f"arguments.{arg.name}.description", arg.description, False))
        return list(_findings(kind, item.name, texts, own, rules, cross))


def _findings(kind: str, name: str, texts: Iterable[tuple[str, str, bool]], own: set[str], rules: list[Rule],
              cross: re.Pattern[str] | None) -> Iterator[Finding]:
    for path, text, is_key in texts:
        if is_key:  # names and schema keys: only characters can hide something in a name
            if match := INVISIBLE_RE.search(text):
                yield Finding("invisible-unicode", kind, name, path, _excerpt(text, match))
            continue
        for rule in rules:
            for match in rule.pattern.finditer(text):
                if rule.id == "secret-reference" and _is_own(match.group(0), own):
                    continue  # a tool that takes an `api_key` may well say so
                yield Finding(rule.id, kind, name, path, _excerpt(text, match))
                break
        if cross is not None and (match := cross.search(text)):
            yield Finding(CROSS_SERVER, kind, name, path, _excerpt(text, match))


def _is_own(word: str, own: set[str]) -> bool:
    """Whether a credential identifier is one of the tool's own names (its name or a parameter)."""
    word = word.lower()
    return bool(_IDENTIFIER.match(word)) and any(word in o for o in own)
