"""Job handlers for the worker-process tests, loaded into a real `shipyard worker` process.

Each run appends ``<event> <job id> <pid>`` to the file named in the payload; appends of a
short line with O_APPEND are atomic, so lines from several processes never interleave.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from shipyard.core import jobs


def _note(path: str, event: str, job: jobs.JobInfo) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{event} {job.id} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def _first_time(marker: str) -> bool:
    """True for the first caller in any process (O_EXCL creation is atomic)."""
    try:
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        return False
    return True


@jobs.handler("probe.record")
async def record(ctx: Any, payload: dict[str, Any], job: jobs.JobInfo) -> None:
    _note(payload["log"], "start", job)
    if payload.get("hang_first_attempt") and job.attempts == 1:
        await asyncio.sleep(3600)  # the test kills this worker with SIGKILL here
    marker = payload.get("hang_once_marker")
    if marker and _first_time(marker):
        await asyncio.sleep(3600)  # the test stops this worker with SIGTERM here
    await asyncio.sleep(payload.get("sleep", 0))
    _note(payload["log"], "done", job)


if __name__ == "__main__":
    from shipyard.cli import main

    main(["worker", *sys.argv[1:]])
