"""`shipyard analytics …` commands."""

from __future__ import annotations

import click


@click.group("analytics", help="Product analytics: tracking plan, rollups, retention, data-subject requests.")
def analytics_group() -> None:
    pass
