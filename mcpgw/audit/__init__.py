"""The step-level audit trail: every step recorded, redacted, hash-chained, linked to its cause.

Above it sits the pipeline's audit stage (`mcpgw.pipeline.stages.audit`), which turns a
finished `Step` into a queued record, and the `mcpgw audit` commands, which read the store.
Inside: `models` (tables, schema version), `store` (engines, migrations), `redact`, `writer`
(the batched writer thread and its bounded queue), `chain` (hashes and `verify`), `query` and
`lineage` (reading), `events` (upstream connect/lost records). It knows nothing of MCP; it
stores what the Step says.
"""
