"""Every command explains itself, and every setting is documented with its default."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import click
from click.testing import CliRunner

from shipyard.cli import main
from shipyard.settings import describe_settings

ROOT = Path(__file__).resolve().parents[2]

# Feature commands whose help was missing when this test was written. The list may only
# shrink: a new command or option without help fails, and so does an entry that now has help
# (delete it). Core commands have no entry here.
KNOWN_GAPS = {
    "shipyard updates publish --json",
    "shipyard updates rollback --channel",
    "shipyard updates rollback --platform",
    "shipyard updates rollback --json",
    "shipyard updates promote --end-rollout",
    "shipyard updates promote --supersede-rollout",
    "shipyard updates promote --json",
    "shipyard updates history --channel",
    "shipyard updates history --limit",
    "shipyard updates history --json",
    "shipyard updates channels --json",
    "shipyard updates rollout list",
    "shipyard updates rollout list --status",
    "shipyard updates rollout list --json",
    "shipyard updates rollout halt --json",
    "shipyard updates rollout resume --json",
    "shipyard updates rollout complete --json",
    "shipyard updates rollout edit --percentage",
    "shipyard updates rollout edit --increment",
    "shipyard updates rollout edit --max",
    "shipyard updates rollout edit --json",
    "shipyard updates signing generate --validity-years",
    "shipyard updates signing import --project",
    "shipyard updates signing import --keyid",
    "shipyard updates signing import --private-key",
    "shipyard updates signing import --certificate",
    "shipyard errors issues list --status",
    "shipyard errors issues list --release",
    "shipyard errors issues list --environment",
    "shipyard errors issues list --level",
    "shipyard errors issues list --limit",
    "shipyard errors issues list --json",
    "shipyard errors issues resolve --project",
    "shipyard errors issues resolve --json",
    "shipyard errors issues ignore --project",
    "shipyard errors issues ignore --json",
    "shipyard errors issues unresolve --project",
    "shipyard errors issues assign --project",
    "shipyard errors health --project",
    "shipyard errors health --hours",
    "shipyard errors health --environment",
    "shipyard errors health --json",
    "shipyard push send --title",
    "shipyard push send --body",
    "shipyard push send --category",
    "shipyard push send --deep-link",
    "shipyard push send --image",
    "shipyard push send --badge",
    "shipyard push send --sound",
    "shipyard push send --recurring",
    "shipyard push send --day-of-month",
    "shipyard push send --campaign",
    "shipyard push list --status",
}


def walk(cmd: click.Command, path: list[str]) -> Iterator[tuple[list[str], click.Command]]:
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            yield from walk(sub, [*path, name])


def test_every_command_and_option_has_help() -> None:
    runner = CliRunner()
    gaps = set()
    commands = list(walk(main, ["shipyard"]))
    assert len(commands) > 30
    for path, cmd in commands:
        shown = runner.invoke(main, [*path[1:], "--help"], terminal_width=200)
        assert shown.exit_code == 0, (path, shown.output)
        assert shown.output.startswith("Usage: ")
        description = (cmd.help or cmd.short_help or "").strip()
        if not description:
            gaps.add(" ".join(path))
        else:
            assert description.split("\n")[0][:40] in " ".join(shown.output.split())
        for param in cmd.params:
            if isinstance(param, click.Option) and not (param.help or "").strip():
                gaps.add(f"{' '.join(path)} {param.opts[0]}")
    new = sorted(gaps - KNOWN_GAPS)
    assert not new, f"commands or options without help: {new}"
    fixed = sorted(KNOWN_GAPS - gaps)
    assert not fixed, f"these now have help; delete them from KNOWN_GAPS: {fixed}"


def test_every_setting_is_documented_with_its_default() -> None:
    text = (ROOT / "docs" / "settings.md").read_text()
    documented = {
        m.group(1): m.group(2) for m in re.finditer(r"^\| `(SHIPYARD_[A-Z0-9_]+)` \| `(.*?)` \| .+\|$", text, re.M)
    }
    regenerate = "regenerate it with `shipyard settings --markdown > docs/settings.md`"
    for row in describe_settings():
        assert row["description"].strip(), f"{row['env']} has no description in settings.py"
        assert row["env"] in documented, f"{row['env']} is not in docs/settings.md: {regenerate}"
        default = json.dumps(row["default"], default=str)
        assert documented[row["env"]] == default, f"{row['env']}: docs say {documented[row['env']]}, code {default}"
    stale = set(documented) - {r["env"] for r in describe_settings()}
    assert not stale, f"docs/settings.md documents settings that no longer exist: {sorted(stale)}"
