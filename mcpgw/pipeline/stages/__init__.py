"""The stages of the pipeline, one concern per module. See `mcpgw.pipeline.chain.STAGE_ORDER`."""
