"""Record: the outermost stage. Stamps each step's end time and outcome, and logs it.

Audit and tracing attach here when they land: this is the one place that sees every step
finish, whichever way it ended (a result, a refusal, an upstream failure, a cancellation).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio

from mcpgw.pipeline.chain import Next
from mcpgw.pipeline.errors import StepError
from mcpgw.pipeline.step import Outcome, Step

log = logging.getLogger("mcpgw.steps")


class Record:
    slot = "record"

    async def __call__(self, step: Step, call_next: Next) -> Any:
        try:
            result = await call_next(step)
        except StepError as exc:
            step.outcome, step.error = exc.outcome, exc.message
            raise
        except anyio.get_cancelled_exc_class():
            step.outcome = Outcome.CANCELLED
            raise
        except Exception as exc:
            step.outcome, step.error = Outcome.ERROR, f"internal error: {type(exc).__name__}"
            raise
        else:
            if step.outcome is None:
                step.outcome = Outcome.OK
            return result
        finally:
            step.ended_ns = time.perf_counter_ns()
            if log.isEnabledFor(logging.DEBUG):
                log.debug("step %s %s %s -> %s in %.2fms%s", step.id, step.kind.value, step.target or "-",
                          step.outcome, step.latency_ms or 0.0, f" ({step.error})" if step.error else "")
