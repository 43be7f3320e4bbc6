"""Approve (guard_in): ask a human before forwarding a call the policy marked `approve`.

The question goes to the agent that made the call, as an MCP elicitation naming the tool and
its arguments; only an explicit accept with `approve = true` lets the call through. Decline,
cancel, no answer in time, or an agent that cannot be asked (no elicitation capability, a
stateless connection) end the step as declined or denied, with the reason.

A 2026-07-28 exchange can take several rounds (the upstream itself may ask for input after the
approval). The agent then retries with the upstream's `requestState`; the gateway wraps that
state with a MAC of the approval (caller, tool, arguments, expiry) so a retry does not ask the
human again, and a state the gateway did not approve does not skip the question.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from typing import Any

import anyio
import mcp.types as t

from mcpgw.pipeline.chain import Next
from mcpgw.pipeline.errors import ApprovalDeclined, PolicyDenied
from mcpgw.pipeline.step import Outcome, Step

APPROVED_PREFIX = "mcpgw-approved:"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"approve": {"type": "boolean", "title": "Approve this call", "default": False}},
    "required": ["approve"],
}


class Approve:
    slot = "guard_in"

    def __init__(self, timeout: float, key: bytes | None = None) -> None:
        self._timeout = timeout
        self._key = key or os.urandom(32)

    async def __call__(self, step: Step, call_next: Next) -> Any:
        if not step.needs_approval:
            return await call_next(step)
        upstream_state = self._approved_state(step)
        if upstream_state is None:
            if (step.request_state or "").startswith(APPROVED_PREFIX):
                step.request_state = None  # expired or not ours: ask again, and never pass it upstream
            await self._ask(step)
        else:
            step.request_state = upstream_state or None
        step.outcome = Outcome.APPROVED
        result = await call_next(step)
        if isinstance(result, t.InputRequiredResult):
            return result.model_copy(update={"request_state": self._seal(step, result.request_state or "")})
        return result

    async def _ask(self, step: Step) -> None:
        if step.ask is None:
            raise PolicyDenied(f"{step.target!r} needs a human's approval, and this request has no way to ask one")
        arguments = json.dumps(step.arguments or {}, indent=2, sort_keys=True, default=str)
        who = step.principal.subject if step.principal else "unknown"
        message = (f"Approve the call of tool {step.target!r} by {who!r}?\n\nArguments:\n{arguments}\n\n"
                   f"(required by policy: {step.rule})")
        request = t.ElicitRequest(params=t.ElicitRequestFormParams(message=message, requested_schema=SCHEMA))
        answer: Any = None
        with anyio.move_on_after(self._timeout):
            answer = await step.ask(request)
        if answer is None:
            raise ApprovalDeclined(f"{step.target!r} needs a human's approval, and none came within "
                                   f"{self._timeout:g}s; the call was not forwarded")
        if isinstance(answer, t.ErrorData):
            raise PolicyDenied(f"{step.target!r} needs a human's approval, and the agent could not be asked "
                               f"({answer.message}); the call was not forwarded")
        action = getattr(answer, "action", None)
        content = getattr(answer, "content", None) or {}
        if action != "accept" or content.get("approve") is not True:
            what = "declined" if action in ("decline", "accept") else "cancelled"
            raise ApprovalDeclined(f"the human {what} the call of {step.target!r}; it was not forwarded")

    def _mac(self, step: Step, expires: int, state: str) -> str:
        subject = step.principal.subject if step.principal else ""
        arguments = json.dumps(step.arguments or {}, sort_keys=True, separators=(",", ":"), default=str)
        message = "\x00".join((subject, step.target, arguments, str(expires), state)).encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def _seal(self, step: Step, state: str) -> str:
        expires = int(time.time() + self._timeout)
        return f"{APPROVED_PREFIX}{expires}:{self._mac(step, expires, state)}:{state}"

    def _approved_state(self, step: Step) -> str | None:
        """The upstream's own state if the retry carries this gateway's approval of this call."""
        state = step.request_state or ""
        if not state.startswith(APPROVED_PREFIX):
            return None
        try:
            expires_text, mac, inner = state[len(APPROVED_PREFIX):].split(":", 2)
            expires = int(expires_text)
        except ValueError:
            return None
        if expires < time.time() or not hmac.compare_digest(mac, self._mac(step, expires, inner)):
            return None
        return inner
