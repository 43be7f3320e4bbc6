"""Records of things that happen to the gateway rather than steps an agent took.

An upstream coming up, failing to start or being lost is recorded in the same trail as the
steps, so `mcpgw audit query --kind 'upstream/*'` shows why the calls around it failed.
"""

from __future__ import annotations

import time
from typing import Any

from mcpgw.audit.redact import Redactor
from mcpgw.audit.writer import blank
from mcpgw.pipeline.step import new_step_id


def upstream_record(name: str, transport: str, *, up: bool, was_up: bool, protocol: str | None, error: str | None,
                    redactor: Redactor) -> dict[str, Any]:
    """`upstream/connect` (ok, or error for a failed start) or `upstream/lost` (it was up)."""
    row = blank()
    row.update(_ns=time.time_ns(), _redactor=redactor, step_id=new_step_id(),
               kind="upstream/lost" if was_up and not up else "upstream/connect", upstream=name, target=name,
               transport=transport, protocol=protocol if up else None, outcome="ok" if up else "error", error=error)
    return row
