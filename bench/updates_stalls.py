"""What can hold the event loop of the manifest endpoint, measured in CPU time (which a
loaded machine does not distort the way it distorts wall-clock latency):

- a full (generation 2) garbage collection over the loaded application, with and without
  the startup-heap freeze the updates feature applies;
- the once-a-second flush of device reports for 6,000 new installations (one second of the
  manifest benchmark): CPU spent on the event-loop thread in total and in its longest step.

    python bench/updates_stalls.py

Every step of the loop blocks every request in flight, so the longest step bounds the
latency tail the feature adds; the database work itself runs in the driver's thread.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Generator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))


class TimedSteps:
    """Awaits a coroutine while timing each step it runs on the loop (thread CPU time)."""

    def __init__(self, coro: Any) -> None:
        self.coro = coro
        self.total = 0.0
        self.longest = 0.0

    def _account(self, started: float) -> None:
        spent = time.thread_time() - started
        self.total += spent
        self.longest = max(self.longest, spent)

    def __await__(self) -> Generator[Any, Any, Any]:
        steps = self.coro.__await__()
        value: Any = None
        while True:
            started = time.thread_time()
            try:
                yielded = steps.send(value)
            except StopIteration as stop:
                self._account(started)
                return stop.value
            self._account(started)
            value = yield yielded


def full_gc_cpu_ms(freeze: bool) -> float:
    """One full collection's CPU in a fresh process that has started the app."""
    code = f"""
import asyncio, gc, sys, tempfile, time
from pathlib import Path
sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / "src")!r}]
from tests.conftest import make_ctx, make_settings
from shipyard.app import create_app
import shipyard.app as app_module
app_module._heap_frozen = {not freeze}  # True skips the freeze
async def main():
    ctx = await make_ctx(make_settings(Path(tempfile.mkdtemp())))
    app = create_app(ctx=ctx)
    async with app.router.lifespan_context(app):
        best = min(_collect() for _ in range(5))
        print(round(best, 1))
    await ctx.close()
def _collect():
    started = time.thread_time()
    gc.collect(2)
    return (time.thread_time() - started) * 1000
asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


async def flush_cpu(devices: int) -> tuple[float, float, int]:
    from tests.conftest import make_ctx, make_settings

    from shipyard.core import projects
    from shipyard.updates.protocol import ManifestRequest
    from shipyard.updates.telemetry import Reports

    ctx = await make_ctx(make_settings(Path(tempfile.mkdtemp()), updates_report_flush_seconds=3600.0))
    async with ctx.db.transaction() as conn:
        project = await projects.create_project(conn, "Bench", public_base="http://bench")
    buffer = Reports(ctx)
    embedded = str(uuid.uuid4())
    for _ in range(devices):
        request = ManifestRequest(
            protocol=1,
            platform="ios",
            runtime_version="1.0.0",
            channel="production",
            client_id=str(uuid.uuid4()),
            current_update_id=embedded,
            embedded_update_id=embedded,
            failed_update_ids=(),
            fatal_error=None,
            expects_signature=True,
            expected_keyid="main",
            accept="multipart/mixed",
            app_version=None,
        )
        buffer.record(project["id"], "production", request, None)
    timed = TimedSteps(buffer.flush())
    written = await timed
    await ctx.close()
    return timed.total * 1000, timed.longest * 1000, written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the results as JSON only")
    parser.add_argument("--quick", action="store_true", help="1,000 devices instead of 6,000")
    args = parser.parse_args()
    total, longest, written = asyncio.run(flush_cpu(1000 if args.quick else 6000))
    results = {
        "flush_rows": written,
        "flush_loop_cpu_ms": round(total, 2),
        "flush_longest_step_ms": round(longest, 2),
        "full_gc_cpu_ms_not_frozen": full_gc_cpu_ms(freeze=False),
        "full_gc_cpu_ms_frozen": full_gc_cpu_ms(freeze=True),
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"flush of {written} device rows: {total:.1f} ms loop CPU in all, longest step {longest:.2f} ms")
    print(f"full GC over the started app, startup heap not frozen: {results['full_gc_cpu_ms_not_frozen']:.1f} ms CPU")
    print(f"full GC over the started app, startup heap frozen:     {results['full_gc_cpu_ms_frozen']:.1f} ms CPU")


if __name__ == "__main__":
    main()
