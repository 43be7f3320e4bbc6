"""The ordered chain of stages every step passes through.

A stage is a small object built once from a config snapshot (`configure`), then called per
step as `await stage(step, call_next)`: it may act before the rest of the chain (identify,
authorize, limit, guard the input), after it (guard the output, record), or instead of it (a
refusal is an exception). The chain knows no concern; it only composes stages in the order of
`STAGE_ORDER`, so a later feature plugs in by providing a stage for its slot, without touching
the front or the connectors.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, Protocol

from mcpgw.pipeline.step import Step

Next = Callable[[Step], Awaitable[Any]]

STAGE_ORDER: tuple[str, ...] = (
    "trace",  # outermost: the step's span, current for every stage inside (only when [telemetry] is on)
    "audit",  # one record per step (with the span's ids), queued once `record` has stamped how it ended
    "record",  # timings and outcome of everything inside, within the step's span
    "identify",
    "authorize",  # before resolve: a name the caller may not see is unknown, whichever upstream has it
    "resolve",
    "limit",
    "guard_in",  # human approval, argument guards: last, so nothing is asked of a human for a refused call
    "guard_out",
    "dispatch",  # innermost: hands the step to its upstream
)


class Stage(Protocol):
    """One concern of the pipeline. `slot` is its place in `STAGE_ORDER`."""

    slot: str

    async def __call__(self, step: Step, call_next: Next) -> Any: ...


async def _end_of_chain(step: Step) -> Any:
    raise RuntimeError(f"no dispatch stage handled step {step.kind} {step.target!r}")


class Pipeline:
    """An immutable, pre-composed chain. Build a new one to change it (hot reload swaps it)."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        order = {slot: i for i, slot in enumerate(STAGE_ORDER)}
        for stage in stages:
            if stage.slot not in order:
                raise ValueError(f"stage {type(stage).__name__} has unknown slot {stage.slot!r}")
        self.stages: tuple[Stage, ...] = tuple(sorted(stages, key=lambda s: order[s.slot]))
        handler: Next = _end_of_chain
        for stage in reversed(self.stages):
            handler = partial(stage, call_next=handler)
        self._run = handler

    async def run(self, step: Step) -> Any:
        return await self._run(step)
