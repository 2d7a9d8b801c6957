"""A threadpool-mode program without HTTP, for crash and shutdown tests: runs until SIGTERM, then drains."""

from __future__ import annotations

import asyncio
import signal

from orchestrator import log
from orchestrator.app import Orchestrator
from orchestrator.settings import load_settings


async def main() -> None:
    settings = load_settings()
    log.configure(settings.LOG_FORMAT, settings.LOG_LEVEL)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with Orchestrator(settings):
        print("ready", flush=True)
        await stop.wait()
    print("drained", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
