"""Run `mcpgw` under pyinstrument, sampling only between two signals (used by gateway_bench.py).

    python bench/_profiled_gateway.py OUT.pstats serve --config servers.toml

SIGUSR1 starts sampling the main thread, SIGUSR2 stops it and writes a pstats file to OUT.pstats,
so start-up, imports and warm-up are left out of the profile.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any


def main() -> int:
    from pyinstrument import Profiler
    from pyinstrument.renderers import PstatsRenderer

    out = Path(sys.argv[1])
    profiler = Profiler(interval=0.0005, async_mode="disabled")

    def start(*_: Any) -> None:
        if not profiler.is_running:
            profiler.start()

    def stop(*_: Any) -> None:
        if profiler.is_running:
            session = profiler.stop()
            data = PstatsRenderer().render(session)
            tmp = out.with_suffix(".tmp")
            tmp.write_bytes(data.encode("utf-8", errors="surrogateescape"))
            tmp.replace(out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    from mcpgw.cli import main as mcpgw_main

    return mcpgw_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
