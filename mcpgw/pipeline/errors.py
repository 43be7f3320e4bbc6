"""Errors a stage may raise to end a step. The front turns them into protocol errors.

Each carries a message that is safe to show the agent: it names the upstream or tool involved
and never includes gateway internals, tracebacks or configured secrets.
"""

from __future__ import annotations

from mcpgw.pipeline.step import Outcome, StepKind

INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603


class StepError(Exception):
    code: int = INTERNAL_ERROR
    outcome: Outcome = Outcome.ERROR

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class UnknownTarget(StepError):
    """The name is not in the catalog (or the caller may not see it: the two look the same)."""

    code = INVALID_PARAMS
    outcome = Outcome.NOT_FOUND


class Quarantined(StepError):
    """The tool or prompt is held out of the catalog by pinning or the description scanner; the
    message says which and how to approve it."""

    code = INVALID_PARAMS
    outcome = Outcome.DENIED


class UpstreamUnavailable(StepError):
    """The owning upstream is down, restarting, or died while the call was in flight."""

    outcome = Outcome.UNAVAILABLE


class UpstreamTimeout(StepError):
    outcome = Outcome.TIMEOUT


class UpstreamProtocolError(StepError):
    """The upstream answered with a JSON-RPC error; code and message are the upstream's own."""


class Unauthenticated(StepError):
    """No identity could be established for the step (the HTTP layer normally refuses first)."""

    outcome = Outcome.UNAUTHENTICATED


class UpstreamCredentialError(StepError):
    """The gateway could not obtain the credential an upstream needs (e.g. a refused token
    exchange). The call is not forwarded: it fails closed rather than going out unauthenticated."""

    outcome = Outcome.DENIED


class PolicyDenied(StepError):
    """A policy rule refused the call (the tool itself is visible to the caller)."""

    code = INVALID_PARAMS
    outcome = Outcome.DENIED


class ApprovalDeclined(StepError):
    """The human declined or cancelled, or did not answer in time."""

    code = INVALID_PARAMS
    outcome = Outcome.DECLINED


class RateLimited(StepError):
    """A rate limit has no room for this call. The front answers with a tool error result that
    says which limit and when to retry (`retry_after`, seconds), so the model can act on it."""

    code = INVALID_PARAMS
    outcome = Outcome.LIMITED

    def __init__(self, message: str, *, limit: str, retry_after: float) -> None:
        super().__init__(message)
        self.limit = limit
        self.retry_after = retry_after


class LimitsUnavailable(StepError):
    """The shared rate-limit counters cannot be reached and the gateway fails closed."""

    outcome = Outcome.UNAVAILABLE


def unknown_target_message(kind: StepKind, target: str) -> str:
    """The one wording for "no such thing", used both for names that do not exist and for names
    the caller may not see, so the answer reveals nothing about which it is."""
    what = {
        StepKind.TOOL_CALL: "tool",
        StepKind.PROMPT_GET: "prompt",
        StepKind.RESOURCE_READ: "resource",
        StepKind.RESOURCE_SUBSCRIBE: "resource",
        StepKind.RESOURCE_UNSUBSCRIBE: "resource",
        StepKind.COMPLETE: "completion reference",
    }.get(kind, kind.value)
    detail = " (it belongs to no configured upstream)" if what == "resource" else ""
    return f"Unknown {what}: {target}{detail}"
