"""The ``shipyard`` command."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import click
from sqlalchemy import func, select

from shipyard.core import audit, auth, migrate, projects
from shipyard.core.auth import Role
from shipyard.core.context import Context
from shipyard.core.errors import ApiError
from shipyard.core.models import users
from shipyard.features import job_modules, load_features
from shipyard.settings import ConfigError, Settings, describe_settings

T = TypeVar("T")
CLI_ACTOR = audit.Actor(type="system", id="cli")


def run_with_ctx(
    fn: Callable[[Context], Awaitable[T]], *, migrate_first: bool = True, settings: Settings | None = None
) -> T:
    """Build a context, migrate, run ``fn(ctx)``, close; turns ApiErrors into clean exits."""

    async def _go() -> T:
        ctx = Context.create(settings or Settings())
        try:
            if migrate_first:
                await migrate.upgrade(ctx.db)
            return await fn(ctx)
        finally:
            await ctx.close()

    try:
        return asyncio.run(_go())
    except ApiError as exc:
        raise click.ClickException(exc.message) from None


def emit(data: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    elif isinstance(data, dict):
        width = max((len(k) for k in data), default=0)
        for key, value in data.items():
            click.echo(f"{key.ljust(width)}  {value}")
    else:
        click.echo(str(data))


class ShipyardGroup(click.Group):
    """Turns configuration mistakes into one clear line and exit status 2, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from pydantic import ValidationError

        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise ConfigProblem(str(exc)) from None
        except ValidationError as exc:
            problems = "; ".join(
                f"SHIPYARD_{str(err['loc'][0]).upper()}: {err['msg']} (got {err.get('input')!r})"
                if err["loc"]
                else err["msg"]
                for err in exc.errors()
            )
            raise ConfigProblem(f"invalid settings: {problems}") from None


class ConfigProblem(click.ClickException):
    exit_code = 2

    def format_message(self) -> str:
        return f"configuration: {self.message}"


@click.group(
    cls=ShipyardGroup,
    help="Shipyard: OTA updates, push, analytics, errors and more for Expo / React Native apps.\n\n"
    "Settings come from SHIPYARD_* environment variables (see `shipyard settings`).",
)
@click.version_option(package_name="shipyard")
def main() -> None:
    pass


# --- server and worker ---------------------------------------------------------------------


async def bootstrap(
    ctx: Context, email: str = "admin@localhost", project_name: str = "My App"
) -> dict[str, Any] | None:
    """Create the first admin and project when the database has no user yet."""
    async with ctx.db.transaction() as conn:
        if (await conn.execute(select(func.count()).select_from(users))).scalar_one():
            return None
        password = auth.generate_password()
        user_id = await auth.create_user(conn, email, password, instance_admin=True)
        created = await projects.create_project(conn, project_name, public_base=ctx.settings.public_base)
        await auth.set_role(conn, user_id, created["id"], Role.owner)
        await audit.record(
            conn,
            ctx,
            CLI_ACTOR,
            "instance.init",
            project_id=created["id"],
            resource_type="project",
            resource_id=created["id"],
            details={"admin": email},
        )
    return {
        "admin_email": email,
        "admin_password": password,
        "project_id": created["id"],
        "project_slug": created["slug"],
        "public_key": created["public_key"],
        "secret_key": created["secret_key"],
        "dsn": created["dsn"],
        "write_key": created["write_key"],
        "manifest_url": created["manifest_url"],
    }


def print_credentials(creds: dict[str, Any]) -> None:
    click.echo("\n  Shipyard is set up. These credentials are shown ONCE — store them now:\n", err=True)
    for key, value in creds.items():
        click.echo(f"    {key:<15} {value}", err=True)
    click.echo("", err=True)


@main.command()
@click.option("--host", default=None, help="Bind address (default: SHIPYARD_HOST or 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default: SHIPYARD_PORT or 8000).")
@click.option("--no-worker", is_flag=True, help="Do not run the background worker in this process.")
@click.option("--workers", type=int, default=1, show_default=True, help="Number of API processes.")
def serve(host: str | None, port: int | None, no_worker: bool, workers: int) -> None:
    """Run the API server (with the background worker unless --no-worker).

    Migrates the database first; on the very first start, creates the first admin user
    and project and prints their credentials once.
    """
    import os

    import uvicorn

    settings = Settings()

    async def _prepare(ctx: Context) -> dict[str, Any] | None:
        return await bootstrap(ctx)

    creds = run_with_ctx(_prepare)
    if creds:
        print_credentials(creds)
    if no_worker:
        os.environ["SHIPYARD_EMBEDDED_WORKER"] = "false"
    host = host or settings.host
    port = port or settings.port
    click.echo(f"Shipyard listening on http://{host}:{port} (data: {settings.resolved_data_dir})", err=True)
    uvicorn.run(
        "shipyard.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        # Our JSON logging (configured by the app) handles uvicorn's loggers too; the
        # gateway writes the access log with the route template and request id.
        log_config=None,
        access_log=False,
        proxy_headers=True,
        server_header=False,
    )


@main.command()
@click.option("--concurrency", type=int, default=None, help="Jobs run at once (default: SHIPYARD_JOB_CONCURRENCY).")
def worker(concurrency: int | None) -> None:
    """Run a background worker only (scale-out: any number of these)."""
    import importlib

    from shipyard.core.jobs import Worker
    from shipyard.core.logs import configure_logging

    for module in job_modules():
        importlib.import_module(module)
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)

    async def _run(ctx: Context) -> None:
        w = Worker(ctx, concurrency=concurrency)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, w.stop)
        click.echo(f"worker {w.id} started", err=True)
        await w.run()

    run_with_ctx(_run)


@main.command("migrate")
def migrate_cmd() -> None:
    """Apply database migrations."""

    async def _run(ctx: Context) -> list[str]:
        return await migrate.pending(ctx.db)

    remaining = run_with_ctx(_run)
    click.echo("database is up to date" if not remaining else f"pending: {remaining}")


@main.command()
@click.option("--email", default="admin@localhost", show_default=True, help="The first admin's email.")
@click.option("--project", "project_name", default="My App", show_default=True, help="The first project's name.")
@click.option("--json", "as_json", is_flag=True, help="Print credentials as JSON.")
def init(email: str, project_name: str, as_json: bool) -> None:
    """Create the first admin user and project, printing their credentials once."""

    creds = run_with_ctx(lambda ctx: bootstrap(ctx, email, project_name))
    if creds is None:
        raise click.ClickException("already initialised: users exist (use `shipyard users create`)")
    if as_json:
        emit(creds, True)
    else:
        print_credentials(creds)


SETTINGS_DOC_HEADER = """# Settings

Every setting is read from a `SHIPYARD_<NAME>` environment variable, or from a TOML file named by
`SHIPYARD_CONFIG` (keys are the lower-case names, e.g. `public_url = "https://ship.example.com"`);
the environment wins over the file. List values (such as `SHIPYARD_CORS_ORIGINS`) are JSON arrays.

This file is generated from the settings registry (`src/shipyard/settings.py`);
`tests/core/test_cli_help_docs.py` fails when a setting is missing here or its default differs.
After adding or changing a setting, regenerate it:

```console
$ shipyard settings --markdown > docs/settings.md
```
"""


@main.command("settings")
@click.option("--markdown", is_flag=True, help="Print docs/settings.md: every setting as a Markdown table.")
def settings_cmd(markdown: bool) -> None:
    """List every setting with its environment variable, default and meaning."""
    rows = describe_settings()
    if markdown:
        click.echo(SETTINGS_DOC_HEADER)
        click.echo("| Environment variable | Default | What it does |\n|---|---|---|")
        for r in rows:
            default = json.dumps(r["default"], default=str)
            click.echo(f"| `{r['env']}` | `{default}` | {r['description']} |")
        return
    for r in rows:
        click.echo(f"{r['env']} (default {json.dumps(r['default'], default=str)})\n    {r['description']}")


# --- projects and keys ---------------------------------------------------------------------


@main.group("projects")
def projects_group() -> None:
    """Create and list projects."""


@projects_group.command("create")
@click.argument("name")
@click.option("--slug", default=None, help="URL name (default: derived from NAME).")
@click.option("--owner", default=None, help="Email of an existing user to make owner.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def projects_create(name: str, slug: str | None, owner: str | None, as_json: bool) -> None:
    """Create a project; prints its keys, DSN, write key and manifest URL (secret key once)."""

    async def _run(ctx: Context) -> dict[str, Any]:
        async with ctx.db.transaction() as conn:
            created = await projects.create_project(conn, name, slug=slug, public_base=ctx.settings.public_base)
            if owner:
                user = await auth.get_user_by_email(conn, owner)
                if user is None:
                    raise click.ClickException(f"no user {owner}")
                await auth.set_role(conn, user.id, created["id"], Role.owner)
            await audit.record(
                conn,
                ctx,
                CLI_ACTOR,
                "project.create",
                project_id=created["id"],
                resource_type="project",
                resource_id=created["id"],
                details={"name": name},
            )
        return created

    emit(run_with_ctx(_run), as_json)


@projects_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array with each project's keys and URLs.")
def projects_list(as_json: bool) -> None:
    """List projects."""
    from shipyard.core.models import projects as projects_table

    async def _run(ctx: Context) -> list[dict[str, Any]]:
        async with ctx.db.connect() as conn:
            rows = (await conn.execute(select(projects_table).order_by(projects_table.c.id))).all()
            return [
                await projects.describe(conn, projects.Project(r.id, r.slug, r.name, {}), ctx.settings.public_base)
                for r in rows
            ]

    rows = run_with_ctx(_run)
    if as_json:
        emit(rows, True)
    for r in rows if not as_json else []:
        click.echo(f"{r['id']:>4}  {r['slug']:<24} {r['dsn']}")


@main.group("keys")
def keys_group() -> None:
    """Create, rotate and revoke a project's API keys."""


@keys_group.command("list")
@click.option("--project", required=True, help="Project id or slug.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def keys_list(project: str, as_json: bool) -> None:
    """List keys (secret keys by prefix only)."""

    async def _run(ctx: Context) -> list[dict[str, Any]]:
        async with ctx.db.connect() as conn:
            p = await projects.get_project(conn, project)
            return await auth.list_keys(conn, p.id)

    rows = run_with_ctx(_run)
    if as_json:
        emit(rows, True)
        return
    for r in rows:
        state = "revoked" if r["revoked_at"] else (f"expires {r['expires_at']}" if r["expires_at"] else "active")
        click.echo(f"{r['id']:>4}  {r['kind']:<6} {r['public_key'] or r['prefix'] + '…':<36} {r['role']:<9} {state}")


@keys_group.command("create")
@click.option("--project", required=True, help="Project id or slug.")
@click.option("--name", required=True, help="What the key is for (e.g. `ci`).")
@click.option(
    "--role",
    type=click.Choice(["viewer", "developer", "admin"]),
    default="admin",
    show_default=True,
    help="What the key may do on the admin API.",
)
@click.option("--scope", "scopes", multiple=True, help="Limit the key to a feature area (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object with the key id and value.")
def keys_create(project: str, name: str, role: str, scopes: tuple[str, ...], as_json: bool) -> None:
    """Create a secret key (printed once)."""

    async def _run(ctx: Context) -> dict[str, Any]:
        async with ctx.db.transaction() as conn:
            p = await projects.get_project(conn, project)
            key_id, value = await auth.create_secret_key(conn, p.id, name, role=Role[role], scopes=list(scopes))
            await audit.record(
                conn,
                ctx,
                CLI_ACTOR,
                "key.create",
                project_id=p.id,
                resource_type="api_key",
                resource_id=key_id,
                details={"name": name, "role": role},
            )
        return {"id": key_id, "secret_key": value}

    emit(run_with_ctx(_run), as_json)


@keys_group.command("rotate")
@click.option("--project", required=True, help="Project id or slug.")
@click.option("--key-id", type=int, default=None, help="Secret key to replace.")
@click.option("--public", "public", is_flag=True, help="Rotate the public key instead (ship it in a new build).")
@click.option("--overlap-hours", type=int, default=None, help="How long the old key keeps working.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object with the new key.")
def keys_rotate(project: str, key_id: int | None, public: bool, overlap_hours: int | None, as_json: bool) -> None:
    """Issue a replacement key; the old one keeps working for the overlap period."""
    if not public and key_id is None:
        raise click.UsageError("give --key-id, or --public")

    async def _run(ctx: Context) -> dict[str, Any]:
        hours = overlap_hours if overlap_hours is not None else ctx.settings.key_rotation_overlap_hours
        async with ctx.db.transaction() as conn:
            p = await projects.get_project(conn, project)
            if public:
                value = await auth.rotate_public_key(conn, p.id, timedelta(hours=hours))
                out: dict[str, Any] = {
                    "public_key": value,
                    **projects.client_urls(ctx.settings.public_base, p.id, value),
                }
            else:
                new_id, value = await auth.rotate_secret_key(conn, p.id, key_id or 0, timedelta(hours=hours))
                out = {"id": new_id, "secret_key": value}
            await audit.record(
                conn,
                ctx,
                CLI_ACTOR,
                "key.rotate",
                project_id=p.id,
                resource_type="api_key",
                resource_id=key_id or "public",
                details={"overlap_hours": hours},
            )
        return out

    emit(run_with_ctx(_run), as_json)


@keys_group.command("revoke")
@click.option("--project", required=True, help="Project id or slug.")
@click.option("--key-id", type=int, required=True, help="The key to revoke (see `shipyard keys list`).")
def keys_revoke(project: str, key_id: int) -> None:
    """Revoke a key immediately."""

    async def _run(ctx: Context) -> bool:
        async with ctx.db.transaction() as conn:
            p = await projects.get_project(conn, project)
            done = await auth.revoke_key(conn, p.id, key_id)
            if done:
                await audit.record(
                    conn, ctx, CLI_ACTOR, "key.revoke", project_id=p.id, resource_type="api_key", resource_id=key_id
                )
            return done

    if not run_with_ctx(_run):
        raise click.ClickException("no such active key")
    click.echo(f"key {key_id} revoked")


# --- users -------------------------------------------------------------------------------


@main.group("users")
def users_group() -> None:
    """Create users and give them roles on projects."""


@users_group.command("create")
@click.argument("email")
@click.option("--instance-admin", is_flag=True, help="May create projects and sees every project.")
@click.option("--password", default=None, help="Initial password (default: generated and printed once).")
def users_create(email: str, instance_admin: bool, password: str | None) -> None:
    """Create a dashboard user."""
    chosen = password or auth.generate_password()

    async def _run(ctx: Context) -> int:
        async with ctx.db.transaction() as conn:
            user_id = await auth.create_user(conn, email, chosen, instance_admin=instance_admin)
            await audit.record(
                conn,
                ctx,
                CLI_ACTOR,
                "user.create",
                resource_type="user",
                resource_id=user_id,
                details={"email": email, "instance_admin": instance_admin},
            )
            return user_id

    user_id = run_with_ctx(_run)
    click.echo(f"user {user_id} created: {email}")
    if password is None:
        click.echo(f"password (shown once): {chosen}")


@users_group.command("set-role")
@click.argument("email")
@click.option("--project", required=True, help="Project id or slug.")
@click.option("--role", type=click.Choice([r.name for r in Role]), required=True, help="The role to give.")
def users_set_role(email: str, project: str, role: str) -> None:
    """Give a user a role on a project."""

    async def _run(ctx: Context) -> None:
        async with ctx.db.transaction() as conn:
            user = await auth.get_user_by_email(conn, email)
            if user is None:
                raise click.ClickException(f"no user {email}")
            p = await projects.get_project(conn, project)
            await auth.set_role(conn, user.id, p.id, Role[role])
            await audit.record(
                conn,
                ctx,
                CLI_ACTOR,
                "member.set_role",
                project_id=p.id,
                resource_type="user",
                resource_id=user.id,
                details={"email": email, "role": role},
            )

    run_with_ctx(_run)
    click.echo(f"{email} is now {role} on {project}")


# --- audit -----------------------------------------------------------------------------------


@main.group("audit")
def audit_group() -> None:
    """Verify and checkpoint the tamper-evident audit trail."""


@audit_group.command("verify")
def audit_verify() -> None:
    """Check the whole hash chain and every signed checkpoint; exit 1 on tampering."""
    result = run_with_ctx(audit.verify)
    if result.ok:
        click.echo(f"audit trail intact: {result.records} records, {result.checkpoints_checked} checkpoints verified")
        return
    click.echo(f"AUDIT TRAIL TAMPERED: {result.problem} (first bad record: seq {result.first_bad_seq})", err=True)
    sys.exit(1)


@audit_group.command("checkpoint")
def audit_checkpoint() -> None:
    """Sign the current chain head now."""
    cp = run_with_ctx(audit.checkpoint)
    click.echo("audit trail is empty" if cp is None else f"checkpoint at seq {cp['seq']}: {cp['head_hash']}")


# --- server secret ---------------------------------------------------------------------------


@main.group("secrets")
def secrets_group() -> None:
    """Rotate the server secret that encrypts stored secrets and keys the audit chain."""


@secrets_group.command("rotate")
@click.option(
    "--generate",
    is_flag=True,
    help="Development: replace the generated <data_dir>/secret.key with a new random secret first.",
)
@click.option("--json", "as_json", is_flag=True, help="Print how many values were re-encrypted, per column.")
def secrets_rotate(generate: bool, as_json: bool) -> None:
    """Re-encrypt every stored secret under the current SHIPYARD_SECRET_KEY.

    Set the new secret as SHIPYARD_SECRET_KEY and the old one in SHIPYARD_PREVIOUS_SECRET_KEYS
    (a JSON list), restart, then run this; afterwards the old secret can be dropped. With
    --generate (no SHIPYARD_SECRET_KEY set) the new secret is generated into the data dir.
    The audit chain keeps verifying: its key is re-encrypted, not changed.
    """
    import os
    import secrets as pysecrets

    from shipyard.core import secrets

    settings = Settings()
    key_file = settings.resolved_data_dir / "secret.key"
    next_file = settings.resolved_data_dir / "secret.key.next"
    if generate:
        if settings.secret_key:
            raise click.UsageError("--generate replaces the generated secret.key; SHIPYARD_SECRET_KEY is set")
        old = settings.resolved_secret_key
        if not next_file.exists():  # kept across a failed run, so a retry uses the same new key
            fd = os.open(next_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(pysecrets.token_urlsafe(48))
        settings = Settings(
            secret_key=next_file.read_text().strip(), previous_secret_keys=[old, *settings.previous_secret_keys]
        )

    async def _run(ctx: Context) -> secrets.RotationReport:
        report = await secrets.rotate_all(ctx)
        async with ctx.db.transaction() as conn:
            await audit.record(
                conn,
                ctx,
                CLI_ACTOR,
                "secrets.rotate",
                resource_type="server_secret",
                details={"reencrypted": report.reencrypted, "undecryptable": report.undecryptable},
                outcome="success" if not report.undecryptable else "partial",
            )
        return report

    report = run_with_ctx(_run, settings=settings)
    if generate:
        os.replace(next_file, key_file)
    if as_json:
        emit({"reencrypted": report.reencrypted, "undecryptable": report.undecryptable}, True)
    else:
        click.echo(f"re-encrypted {report.total} stored secrets under the current server secret")
        for column, count in report.reencrypted.items():
            click.echo(f"  {column:<40} {count}")
        if generate:
            click.echo("new secret written to secret.key: restart running servers and workers")
    if report.undecryptable:
        for column, count in report.undecryptable.items():
            click.echo(
                f"could not decrypt {count} values in {column}: add their secret to "
                "SHIPYARD_PREVIOUS_SECRET_KEYS and run again",
                err=True,
            )
        sys.exit(1)


# --- backups ---------------------------------------------------------------------------------


@main.group("backup")
def backup_group() -> None:
    """Back up and restore the database and the local blob store (kept in <data_dir>/backups)."""


@backup_group.command("create")
@click.option("--json", "as_json", is_flag=True, help="Print the new backup as a JSON object.")
def backup_create(as_json: bool) -> None:
    """Make a consistent backup while the server runs; prunes beyond SHIPYARD_BACKUP_RETENTION."""
    from shipyard.core import backup

    settings = Settings()
    try:
        info = backup.create_backup(settings)
    except backup.BackupError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        emit(info.as_dict(), True)
        return
    click.echo(f"backup {info.name} created: {info.database}, {info.blobs} blobs, {info.size_bytes} bytes")
    click.echo(f"  {info.path}")


@backup_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def backup_list(as_json: bool) -> None:
    """List the backups in the data dir, oldest first."""
    from shipyard.core import backup

    rows = backup.list_backups(Settings())
    if as_json:
        emit([r.as_dict() for r in rows], True)
        return
    if not rows:
        click.echo("no backups yet (`shipyard backup create`)")
    for r in rows:
        click.echo(f"{r.name}  {r.database:<10} {r.blobs:>6} blobs  {r.size_bytes:>12} bytes")


@backup_group.command("restore")
@click.argument("backup_name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def backup_restore(backup_name: str, yes: bool) -> None:
    """Replace the database with BACKUP_NAME (a name from `backup list`, or a backup's path).

    Also copies back missing blobs and, when the server secret was generated into the data
    dir, that secret. Stop the API and worker processes first on PostgreSQL.
    """
    from shipyard.core import backup

    settings = Settings()
    if not yes:
        click.confirm(f"Replace the current database with {backup_name}?", abort=True)
    try:
        result = backup.restore_backup(settings, backup_name)
    except backup.BackupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"restored {result['restored']}: {result['database']} database, {result['blobs']} blobs")
    for warning in result["warnings"]:
        click.echo(f"warning: {warning}", err=True)


def _add_feature_commands() -> None:
    for feature in load_features():
        if feature.cli is not None:
            main.add_command(feature.cli())


_add_feature_commands()

if __name__ == "__main__":
    main()
