"""Background jobs: rollups, raw-event retention, salt purge."""

from __future__ import annotations
