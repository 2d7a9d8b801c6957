"""`python -m bench` (what `just bench` runs): parse the options, run, print the report; status 1 if a scenario
failed."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from bench.console import BenchError, note
from bench.options import parse_options
from bench.report import print_report
from bench.runner import run_bench


def main(argv: list[str]) -> int:
    options = parse_options(argv)
    for name in ("httpx", "httpcore"):  # one INFO line per request would drown the progress bar
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        import uvloop

        results: dict[str, Any] = uvloop.run(run_bench(options))
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        results = asyncio.run(run_bench(options))
    except BenchError as exc:
        note(f"bench: {exc}")
        return 1
    except (asyncio.CancelledError, KeyboardInterrupt):
        note("bench: interrupted; servers stopped, bench database dropped")
        return 130
    print_report(results, options.compare_path, options.json_path)
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
