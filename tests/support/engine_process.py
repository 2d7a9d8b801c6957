"""A threadpool-mode program without HTTP, for crash and shutdown tests: runs until SIGTERM, then drains.

`engine_process.py WORKFLOW COUNT` also starts COUNT processes of WORKFLOW itself, before it says "ready" (so that
it holds them from their insert on).
"""

from __future__ import annotations

import asyncio
import signal
import sys

from orchestrator import log, services
from orchestrator.runtime.orchestrator import Orchestrator
from orchestrator.settings import load_settings


async def main() -> None:
    settings = load_settings()
    log.configure(settings.LOG_FORMAT, settings.LOG_LEVEL)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with Orchestrator(settings) as orch:
        workflow, count = (sys.argv[1], int(sys.argv[2])) if len(sys.argv) > 2 else ("", 0)
        for _ in range(count):
            await services.start_process(workflow, [{}], orchestrator=orch)
        print("ready", flush=True)
        await stop.wait()
    print("drained", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
