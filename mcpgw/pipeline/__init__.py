"""The pipeline: a neutral `Step` and the ordered stages it passes through.

Above it sits the front (which speaks MCP to agents and builds Steps); below it the upstream
connectors (which speak each upstream's wire format). The pipeline imports neither.
"""

from mcpgw.pipeline.chain import STAGE_ORDER, Next, Pipeline, Stage
from mcpgw.pipeline.errors import StepError, UnknownTarget, UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable
from mcpgw.pipeline.step import Asker, Caller, Outcome, Principal, ProgressFn, Route, Step, StepKind, new_step_id

__all__ = [
    "STAGE_ORDER",
    "Asker",
    "Caller",
    "Next",
    "Outcome",
    "Pipeline",
    "Principal",
    "ProgressFn",
    "Route",
    "Stage",
    "Step",
    "StepError",
    "StepKind",
    "UnknownTarget",
    "UpstreamProtocolError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "new_step_id",
]
