"""Typed configuration of where rate-limit counters live: the `[limits]` table.

The limits themselves (who, which tools, how many per what) are policy and live in
`policies/*.toml`; this table only says whether counters are kept in this process (no `url`)
or in Redis shared by every replica, and what to do when Redis cannot be reached.
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator


class LimitsSettings(BaseModel):
    """`[limits]`. `url` may carry a password (`redis://:${REDIS_PASSWORD}@host:6379/0`): it is kept
    out of every repr; logs and errors show `display_url`, which has no user information."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = Field(default=None, repr=False,
                            description="redis://, rediss:// or unix:// URL; none: counters in this process")
    on_unavailable: Literal["fail-closed", "local"] = Field(
        default="fail-closed",
        description="when Redis cannot be reached: refuse limited calls, or count per process meanwhile",
    )
    key_prefix: str = Field(default="mcpgw:limit:", min_length=1, description="prefix of every Redis key")
    timeout: float = Field(default=0.5, gt=0, le=30, description="seconds to connect to Redis, and per command")
    retry_interval: float = Field(default=1.0, gt=0, description="seconds between attempts while Redis is down")

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(rediss?://[^/\s]+|unix:///\S+)", value):
            # Never echo the value: it may hold a password.
            raise ValueError("must be a redis://host[:port][/db], rediss://... or unix:///path URL")
        return value

    @property
    def display_url(self) -> str | None:
        """The URL without its user information (no password), for logs and messages."""
        if self.url is None:
            return None
        parts = urlsplit(self.url)
        host = parts.netloc.rpartition("@")[2]
        return parts._replace(netloc=host, query="").geturl()
