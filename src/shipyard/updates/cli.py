"""``shipyard updates …``: publish an ``expo export`` output, steer rollouts, roll back,
promote, and manage the code-signing key.

Workflow commands talk to a running server's admin API (``--url``/``--key`` or
``SHIPYARD_URL``/``SHIPYARD_KEY``, a project secret key), so CI needs nothing but the
CLI. ``signing`` commands run against the local database, on the server's host.
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click
import httpx

from shipyard.updates.export import ExportError, read_export

PREFIX = "/api/v1/projects/{project}/updates"


class Api:
    def __init__(self, url: str | None, key: str | None, project: str) -> None:
        url = url or os.environ.get("SHIPYARD_URL")
        key = key or os.environ.get("SHIPYARD_KEY")
        if not url:
            raise click.UsageError("give the server URL with --url or SHIPYARD_URL")
        if not key:
            raise click.UsageError("give a project secret key with --key or SHIPYARD_KEY")
        self.client = httpx.Client(
            base_url=url.rstrip("/") + PREFIX.format(project=project),
            headers={"Authorization": f"Bearer {key}", "User-Agent": "shipyard-cli"},
            timeout=httpx.Timeout(120.0, connect=10.0),
        )

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise click.ClickException(f"cannot reach the server: {exc}") from None
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                message = f"{error['message']} ({error['code']}, HTTP {response.status_code})"
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {response.status_code}: {response.text[:300]}"
            raise click.ClickException(message)
        return response.json() if response.content else None


def server_options(fn: Any) -> Any:
    fn = click.option("--key", envvar="SHIPYARD_KEY", help="Project secret key (sk_…); or SHIPYARD_KEY.")(fn)
    fn = click.option("--url", envvar="SHIPYARD_URL", help="Server base URL; or SHIPYARD_URL.")(fn)
    fn = click.option("--project", "-p", required=True, help="Project id or slug.")(fn)
    return fn


def output(data: Any, as_json: bool, lines: list[str] | None = None) -> None:
    if as_json or not lines:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        for line in lines:
            click.echo(line)


@click.group("updates", help="Over-the-air updates for expo-updates apps.")
def updates_group() -> None:
    pass


# --- publish ---------------------------------------------------------------------------------------


@updates_group.command("publish")
@click.argument("dist", type=click.Path(exists=True, file_okay=False, path_type=Path))
@server_options
@click.option("--channel", "-c", help="Channel to publish to (its branch gets the update).")
@click.option("--branch", "-b", help="Branch to publish to instead of a channel's.")
@click.option("--message", "-m", default="", help="What changed (shown in history).")
@click.option("--runtime-version", help="Runtime version (default: from the app config in the export).")
@click.option("--platform", "platforms", multiple=True, type=click.Choice(["ios", "android"]), help="Limit platforms.")
@click.option("--rollout", type=click.FloatRange(0, 100, min_open=True), help="Start a staged rollout at PCT %.")
@click.option("--rollout-increment", type=click.FloatRange(0, 100, min_open=True), help="Raise by this much …")
@click.option("--rollout-interval", type=click.IntRange(1), help="… every this many minutes …")
@click.option("--rollout-max", type=click.FloatRange(0, 100, min_open=True), help="… up to this percentage.")
@click.option("--critical", is_flag=True, help="Mark critical: raises the critical index apps act on.")
@click.option("--min-app-version", help="Only devices whose native app version is at least this get it.")
@click.option("--end-rollout", is_flag=True, help="If a rollout is active: end it (its update stops being offered).")
@click.option("--supersede-rollout", is_flag=True, help="If a rollout is active: this update takes over its devices.")
@click.option("--json", "as_json", is_flag=True)
def publish_cmd(
    dist: Path,
    project: str,
    url: str | None,
    key: str | None,
    channel: str | None,
    branch: str | None,
    message: str,
    runtime_version: str | None,
    platforms: tuple[str, ...],
    rollout: float | None,
    rollout_increment: float | None,
    rollout_interval: int | None,
    rollout_max: float | None,
    critical: bool,
    min_app_version: str | None,
    end_rollout: bool,
    supersede_rollout: bool,
    as_json: bool,
) -> None:
    """Publish DIST, the folder `npx expo export` wrote.

    Only files the server does not have yet are uploaded; the update becomes visible in one
    step once every file is stored.
    """
    if bool(channel) == bool(branch):
        raise click.UsageError("give exactly one of --channel or --branch")
    if end_rollout and supersede_rollout:
        raise click.UsageError("--end-rollout and --supersede-rollout exclude each other")
    try:
        export = read_export(dist, runtime_version_flag=runtime_version, platforms=list(platforms) or None)
    except ExportError as exc:
        raise click.ClickException(str(exc)) from None
    api = Api(url, key, project)
    missing = api.call("POST", "/assets/missing", json={"blobs": sorted(export.files)})["missing"]
    uploaded_bytes = sum(export.files[m].size for m in missing)
    click.echo(
        f"{len(export.files)} files, {len(missing)} to upload ({uploaded_bytes / 1024:.1f} KiB); "
        f"{len(export.files) - len(missing)} already on the server",
        err=True,
    )

    def upload(digest: str) -> None:
        api.call(
            "PUT",
            f"/blobs/{digest}",
            content=export.files[digest].path.read_bytes(),
            headers={"Content-Type": "application/octet-stream"},
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(upload, missing))
    body: dict[str, Any] = {
        "channel": channel,
        "branch": branch,
        "message": message,
        "platforms": export.platforms,
        "expo_config": export.expo_config,
        "critical": critical,
        "min_app_version": min_app_version,
        "on_active_rollout": "end" if end_rollout else "supersede" if supersede_rollout else None,
    }
    if rollout is not None:
        body["rollout"] = {
            "percentage": rollout,
            "increment": rollout_increment,
            "interval_minutes": rollout_interval,
            "max_percentage": rollout_max,
        }
    result = api.call("POST", "/publish", json=body)
    lines = [f"published update group {result['group_id']} to branch {result['branch']} ({result['channel']})"]
    lines += [f"  {u['platform']:<8} {u['id']}  runtime {u['runtime_version']}" for u in result["updates"]]
    if result["rollout_percentage"] < 100:
        lines.append(f"  rolling out to {result['rollout_percentage']:g} % of devices")
    if critical:
        lines.append(f"  critical index {result['critical_index']}")
    output(result, as_json, lines)


# --- rollback, promote, history ----------------------------------------------------------------------


@updates_group.command("rollback")
@server_options
@click.option("--channel", "-c", required=True)
@click.option("--runtime-version", help="Only this runtime version (default: every one on the channel).")
@click.option("--platform", "platforms", multiple=True, type=click.Choice(["ios", "android"]))
@click.option("--to-embedded", is_flag=True, help="Send devices back to the update built into the app.")
@click.option("--reason", default="", help="Why (kept in history and the audit trail).")
@click.option("--json", "as_json", is_flag=True)
def rollback_cmd(
    project: str,
    url: str | None,
    key: str | None,
    channel: str,
    runtime_version: str | None,
    platforms: tuple[str, ...],
    to_embedded: bool,
    reason: str,
    as_json: bool,
) -> None:
    """Roll a channel back to the previous update (republished so devices accept it) or to embedded."""
    result = Api(url, key, project).call(
        "POST",
        "/rollback",
        json={
            "channel": channel,
            "runtime_version": runtime_version,
            "platforms": list(platforms) or None,
            "to_embedded": to_embedded,
            "reason": reason,
        },
    )
    target = "the embedded update" if to_embedded else f"a republish of the previous update ({result['group_id']})"
    output(result, as_json, [f"rolled back {', '.join(result['rolled_back_groups'])} on {channel} to {target}"])


@updates_group.command("promote")
@server_options
@click.option("--from", "from_channel", required=True, help="Channel whose latest update is promoted.")
@click.option("--to", "to_channel", required=True, help="Channel it is republished to.")
@click.option("--group", "group_id", help="A specific update group instead of the latest.")
@click.option("--rollout", type=click.FloatRange(0, 100, min_open=True), help="Roll it out gradually at PCT %.")
@click.option("--end-rollout", is_flag=True)
@click.option("--supersede-rollout", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
def promote_cmd(
    project: str,
    url: str | None,
    key: str | None,
    from_channel: str,
    to_channel: str,
    group_id: str | None,
    rollout: float | None,
    end_rollout: bool,
    supersede_rollout: bool,
    as_json: bool,
) -> None:
    """Ship exactly the tested update group from one channel to another."""
    result = Api(url, key, project).call(
        "POST",
        "/promote",
        json={
            "from_channel": from_channel,
            "to_channel": to_channel,
            "group_id": group_id,
            "rollout": {"percentage": rollout} if rollout is not None else None,
            "on_active_rollout": "end" if end_rollout else "supersede" if supersede_rollout else None,
        },
    )
    output(result, as_json, [f"promoted to {to_channel} as update group {result['group_id']}"])


@updates_group.command("history")
@server_options
@click.option("--channel", "-c")
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def history_cmd(project: str, url: str | None, key: str | None, channel: str | None, limit: int, as_json: bool) -> None:
    """Deployment history: publishes, rollout changes, halts, rollbacks and promotions."""
    result = Api(url, key, project).call("GET", "/history", params={"channel": channel, "limit": limit})
    rows = result["data"]
    lines = [f"{'deployed':<20} {'channel':<12} {'status':<12} {'rollout':>7} {'devices':>8} {'errors':>7}  version"]
    for r in rows:
        rate = "—" if r["error_rate"] is None else f"{r['error_rate'] * 100:.1f}%"
        lines.append(
            f"{r['deployed_at'][:19]:<20} {r['channel']:<12} {r['status']:<12} {r['rollout_percentage']:>6g}% "
            f"{r['devices_affected']:>8} {rate:>7}  {r['version']}"
        )
    output(result, as_json, lines)


@updates_group.command("channels")
@server_options
@click.option("--create", "create", help="Create this channel.")
@click.option("--branch", help="With --create or --edit: the branch it points at.")
@click.option("--edit", "edit", help="Point this channel at --branch.")
@click.option("--json", "as_json", is_flag=True)
def channels_cmd(
    project: str,
    url: str | None,
    key: str | None,
    create: str | None,
    branch: str | None,
    edit: str | None,
    as_json: bool,
) -> None:
    """List channels, create one, or point one at another branch."""
    api = Api(url, key, project)
    if create:
        api.call("POST", "/channels", json={"name": create, "branch": branch})
    elif edit:
        if not branch:
            raise click.UsageError("--edit needs --branch")
        api.call("PATCH", f"/channels/{edit}", json={"branch": branch})
    result = api.call("GET", "/channels", params={"limit": 500})
    output(result, as_json, [f"{c['name']:<20} → {c['branch']}" for c in result["data"]])


# --- rollouts ----------------------------------------------------------------------------------------


@updates_group.group("rollout", help="Inspect and steer staged rollouts.")
def rollout_group() -> None:
    pass


@rollout_group.command("list")
@server_options
@click.option("--status", type=click.Choice(["active", "halted", "completed", "rolled_back", "superseded", "ended"]))
@click.option("--json", "as_json", is_flag=True)
def rollout_list(project: str, url: str | None, key: str | None, status: str | None, as_json: bool) -> None:
    result = Api(url, key, project).call("GET", "/rollouts", params={"status": status} if status else {})
    output(
        result,
        as_json,
        [f"{r['group_id']}  {r['branch']:<12} {r['status']:<10} {r['percentage']:>6g}%" for r in result["data"]],
    )


def _steer(action: str) -> Any:
    @server_options
    @click.argument("group_id")
    @click.option("--json", "as_json", is_flag=True)
    def command(project: str, url: str | None, key: str | None, group_id: str, as_json: bool, **extra: Any) -> None:
        body = {"reason": extra.get("reason") or ""} if action == "halt" else None
        result = Api(url, key, project).call("POST", f"/rollouts/{group_id}/{action}", json=body)
        output(result, as_json, [f"rollout of {group_id}: {result['status']} at {result['percentage']:g} %"])

    return command


rollout_group.command("halt", help="Stop offering the update to new devices.")(
    click.option("--reason", default="", help="Why (kept in history).")(_steer("halt"))
)
rollout_group.command("resume", help="Resume a halted rollout (admin).")(_steer("resume"))
rollout_group.command("complete", help="Ship to 100 % now (admin).")(_steer("complete"))


@rollout_group.command("edit")
@server_options
@click.argument("group_id")
@click.option("--percentage", type=click.FloatRange(0, 100, min_open=True))
@click.option("--increment", type=click.FloatRange(0, 100, min_open=True))
@click.option("--interval", type=click.IntRange(1), help="Minutes between increments.")
@click.option("--max", "max_percentage", type=click.FloatRange(0, 100, min_open=True))
@click.option("--json", "as_json", is_flag=True)
def rollout_edit(
    project: str,
    url: str | None,
    key: str | None,
    group_id: str,
    percentage: float | None,
    increment: float | None,
    interval: int | None,
    max_percentage: float | None,
    as_json: bool,
) -> None:
    """Change a rollout's percentage or plan (100 completes it)."""
    result = Api(url, key, project).call(
        "PATCH",
        f"/rollouts/{group_id}",
        json={
            "percentage": percentage,
            "increment": increment,
            "interval_minutes": interval,
            "max_percentage": max_percentage,
        },
    )
    output(result, as_json, [f"rollout of {group_id}: {result['status']} at {result['percentage']:g} %"])


# --- code signing (local database) -------------------------------------------------------------------


@updates_group.group("signing", help="The project's code-signing key (runs on the server host).")
def signing_group() -> None:
    pass


@signing_group.command("generate")
@click.option("--project", "-p", required=True, help="Project id or slug.")
@click.option("--keyid", default="main", show_default=True, help="codeSigningMetadata.keyid in the app config.")
@click.option("--common-name", help="Certificate subject CN (default: Shipyard <project>).")
@click.option("--validity-years", default=10, show_default=True, type=click.IntRange(1, 30))
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write the certificate here.")
def signing_generate(
    project: str, keyid: str, common_name: str | None, validity_years: int, output: Path | None
) -> None:
    """Generate an RSA key pair and a self-signed code-signing certificate.

    The private key is stored encrypted; the certificate PEM is printed (or written to
    --output) for the app's `codeSigningCertificate`.
    """
    from shipyard.cli import CLI_ACTOR, run_with_ctx
    from shipyard.core import audit, projects
    from shipyard.core.context import Context
    from shipyard.updates import cache, signing

    async def _run(ctx: Context) -> dict[str, Any]:
        async with ctx.db.transaction() as conn:
            target = await projects.get_project(conn, project)
            result = await signing.generate(
                conn,
                ctx,
                target.id,
                keyid=keyid,
                common_name=common_name or f"Shipyard {target.slug}",
                years=validity_years,
            )
            await audit.record(
                conn,
                ctx,
                CLI_ACTOR,
                "updates.signing.generate",
                project_id=target.id,
                resource_type="signing_key",
                resource_id=result["id"],
                details={"keyid": keyid, "fingerprint_sha256": result["fingerprint_sha256"]},
            )
        cache.invalidate(ctx, target.id)
        return result

    result = run_with_ctx(_run)
    _print_signing(result, output)


@signing_group.command("import")
@click.option("--project", "-p", required=True)
@click.option("--keyid", default="main", show_default=True)
@click.option("--private-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--certificate", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option(
    "--certificate-chain",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM chain (leaf first) sent in the certificate_chain part.",
)
def signing_import(
    project: str, keyid: str, private_key: Path, certificate: Path, certificate_chain: Path | None
) -> None:
    """Import an existing key pair (e.g. from `npx expo-updates codesigning:generate`)."""
    from shipyard.cli import CLI_ACTOR, run_with_ctx
    from shipyard.core import audit, projects
    from shipyard.core.context import Context
    from shipyard.updates import cache, signing

    key_pem, cert_pem = private_key.read_text(), certificate.read_text()
    chain_pem = certificate_chain.read_text() if certificate_chain else None

    async def _run(ctx: Context) -> dict[str, Any]:
        async with ctx.db.transaction() as conn:
            target = await projects.get_project(conn, project)
            result = await signing.store_key(
                conn,
                ctx,
                target.id,
                keyid=keyid,
                key_pem=key_pem,
                cert_pem=cert_pem,
                chain_pem=chain_pem,
            )
            await audit.record(
                conn,
                ctx,
                CLI_ACTOR,
                "updates.signing.import",
                project_id=target.id,
                resource_type="signing_key",
                resource_id=result["id"],
                details={"keyid": keyid, "fingerprint_sha256": result["fingerprint_sha256"]},
            )
        cache.invalidate(ctx, target.id)
        return result

    _print_signing(run_with_ctx(_run), None)


def _print_signing(result: dict[str, Any], output_path: Path | None) -> None:
    click.echo(
        f"signing key stored (keyid {result['keyid']}, {result['alg']}, certificate valid until "
        f"{result['not_valid_after'][:10]}, sha256 {result['fingerprint_sha256'][:16]}…)",
        err=True,
    )
    click.echo(
        'app config: "updates": {"codeSigningCertificate": "./certs/certificate.pem", '
        f'"codeSigningMetadata": {{"keyid": "{result["keyid"]}", "alg": "{result["alg"]}"}}}}',
        err=True,
    )
    if output_path is not None:
        output_path.parent.mkdir(parents=True, exist_ok=True)  # e.g. ./certs/ in a fresh app
        output_path.write_text(result["certificate_pem"])
        click.echo(f"certificate written to {output_path}", err=True)
    else:
        sys.stdout.write(result["certificate_pem"])
