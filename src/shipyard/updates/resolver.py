"""The manifest endpoint's hot path: resolve (project, channel, runtime, platform, device)
to an update or a directive, and answer with cached, pre-signed bytes.

Per (project, channel, runtime version, platform) the newest updates on the channel's
branch and their rollouts are held in memory; per (update, format, signed) the exact
response body (signature included) is held too, so a request costs header parsing, one
SHA-256 for rollout bucketing and a dictionary lookup. Entries are dropped when this
process changes the project (see :mod:`shipyard.updates.cache`) and expire after
``updates_cache_seconds`` so other processes' changes show up quickly.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.core.context import Context
from shipyard.core.errors import ApiError, BadRequest, NotFound
from shipyard.core.models import projects as projects_table
from shipyard.updates import cache, signing
from shipyard.updates.bucketing import in_rollout
from shipyard.updates.models import branches, channels, groups, rollouts, updates
from shipyard.updates.protocol import (
    EXPO_JSON,
    MULTIPART,
    ManifestRequest,
    Part,
    iso_ms,
    multipart_body,
    negotiate,
    serialize_dictionary,
)
from shipyard.updates.service import ensure_defaults

CANDIDATES = 20  # newest updates kept per channel/runtime/platform (min-version filtering walks them)
MAX_ENTRIES = 20_000


@dataclass(frozen=True)
class RolloutView:
    status: str
    percentage: float
    salt: str


@dataclass(frozen=True)
class Candidate:
    id: str
    kind: str  # update | rollback_to_embedded
    created_at: datetime
    group_id: str
    group_status: str
    runtime_version: str
    platform: str
    manifest: dict[str, Any]
    control_update_id: str | None
    min_app_version: str | None
    rollout: RolloutView | None


@dataclass
class ChannelState:
    branch: str
    candidates: list[Candidate]
    controls: dict[str, Candidate]
    filters_header: str
    expires: float
    generation: int


@dataclass
class ProjectState:
    project_id: int
    default_channel: str
    channels: dict[str, tuple[int, str]]  # name -> (branch id, branch name)
    signer: signing.Signer | None
    expires: float
    generation: int
    bodies: dict[tuple[str, str, bool], tuple[bytes, str, str | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str | None
    headers: dict[str, str]
    served_update_id: str | None  # the update whose manifest was sent (for adoption stats)
    outcome: str  # manifest | no_update | rollback
    channel: str = ""


def version_tuple(value: str) -> tuple[int, ...]:
    parts = []
    for piece in value.strip().split("."):
        digits = "".join(ch for ch in piece if ch.isdecimal())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def meets_min_version(app_version: str | None, minimum: str | None) -> bool:
    """Updates that need a newer native app are skipped; an app that does not say its version
    does not get them either (safer than crashing an old binary)."""
    if not minimum:
        return True
    if not app_version:
        return False
    return version_tuple(app_version) >= version_tuple(minimum)


class Resolver:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.projects: dict[int, ProjectState] = {}
        self.channels: dict[tuple[int, str, str, str], ChannelState] = {}
        self._loading: dict[Any, asyncio.Future[Any]] = {}

    # --- loading --------------------------------------------------------------------------------

    def _ttl(self) -> float:
        return float(self.ctx.settings.updates_cache_seconds)

    async def _once(self, key: Any, loader: Any) -> Any:
        """Run one load per key at a time; concurrent callers share its result."""
        pending = self._loading.get(key)
        if pending is not None:
            return await pending
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            value = await loader()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: only concurrent waiters care
            raise
        finally:
            self._loading.pop(key, None)
        future.set_result(value)
        return value

    async def project(self, project_id: int) -> ProjectState:
        state = self.projects.get(project_id)
        if (
            state is not None
            and state.expires > time.monotonic()
            and state.generation == cache.generation(self.ctx, project_id)
        ):
            return state
        return await self._once(("project", project_id), lambda: self._load_project(project_id))

    async def _load_project(self, project_id: int) -> ProjectState:
        generation = cache.generation(self.ctx, project_id)
        async with self.ctx.db.connect() as conn:
            row = (
                await conn.execute(
                    select(projects_table.c.id, projects_table.c.settings).where(projects_table.c.id == project_id)
                )
            ).first()
            if row is None:
                raise NotFound(f"project {project_id}")
            chans = await self._channels(conn, project_id)
            signer = await signing.load_signer(conn, self.ctx, project_id)
        if not chans:
            async with self.ctx.db.transaction() as conn:
                await ensure_defaults(conn, project_id)
                chans = await self._channels(conn, project_id)
        settings = dict(row.settings or {})
        previous = self.projects.get(project_id)
        # Signed bodies depend only on the (immutable) update and the signer: keep them across
        # reloads while the key is the same, so expiry does not mean re-signing every manifest.
        bodies = previous.bodies if previous is not None and previous.signer is signer else {}
        if len(bodies) > 5_000:
            bodies = {}
        state = ProjectState(
            project_id=project_id,
            default_channel=str(settings.get("updates_default_channel") or "production"),
            channels=chans,
            signer=signer,
            expires=time.monotonic() + self._ttl(),
            generation=generation,
            bodies=bodies,
        )
        if len(self.projects) > MAX_ENTRIES:
            self.projects.clear()
        self.projects[project_id] = state
        return state

    @staticmethod
    async def _channels(conn: AsyncConnection, project_id: int) -> dict[str, tuple[int, str]]:
        rows = await conn.execute(
            select(channels.c.name, channels.c.branch_id, branches.c.name.label("branch"))
            .join(branches, branches.c.id == channels.c.branch_id)
            .where(channels.c.project_id == project_id)
        )
        return {r.name: (int(r.branch_id), str(r.branch)) for r in rows}

    async def channel_state(
        self, project: ProjectState, channel: str, runtime_version: str, platform: str
    ) -> ChannelState:
        key = (project.project_id, channel, runtime_version, platform)
        state = self.channels.get(key)
        if state is not None and state.expires > time.monotonic() and state.generation == project.generation:
            return state
        return await self._once(key, lambda: self._load_channel(project, key))

    async def _load_channel(self, project: ProjectState, key: tuple[int, str, str, str]) -> ChannelState:
        _pid, channel, runtime_version, platform = key
        branch_id, branch_name = project.channels[channel]
        async with self.ctx.db.connect() as conn:
            rows = list(
                await conn.execute(
                    self._candidate_query()
                    .where(
                        updates.c.branch_id == branch_id,
                        updates.c.runtime_version == runtime_version,
                        updates.c.platform == platform,
                    )
                    .order_by(updates.c.created_at.desc())
                    .limit(CANDIDATES)
                )
            )
            candidates = [self._candidate(r) for r in rows]
            known = {c.id for c in candidates}
            wanted = {
                c.control_update_id for c in candidates if c.control_update_id and c.control_update_id not in known
            }
            controls = {c.id: c for c in candidates}
            if wanted:
                for r in await conn.execute(self._candidate_query().where(updates.c.id.in_(sorted(wanted)))):
                    controls[r.id] = self._candidate(r)
        state = ChannelState(
            branch=branch_name,
            candidates=candidates,
            controls=controls,
            filters_header=serialize_dictionary({"branch": branch_name}),
            expires=time.monotonic() + self._ttl(),
            generation=project.generation,
        )
        if len(self.channels) > MAX_ENTRIES:
            self.channels.clear()
        self.channels[key] = state
        return state

    @staticmethod
    def _candidate_query() -> Any:
        return (
            select(
                updates,
                groups.c.status.label("group_status"),
                rollouts.c.status.label("rollout_status"),
                rollouts.c.percentage,
                rollouts.c.salt,
            )
            .join(groups, groups.c.id == updates.c.group_id)
            .outerjoin(rollouts, rollouts.c.group_id == updates.c.group_id)
        )

    @staticmethod
    def _candidate(row: Any) -> Candidate:
        rollout = None
        if row.rollout_status is not None:
            rollout = RolloutView(row.rollout_status, float(row.percentage), row.salt)
        return Candidate(
            id=row.id,
            kind=row.kind,
            created_at=row.created_at,
            group_id=row.group_id,
            group_status=row.group_status,
            runtime_version=row.runtime_version,
            platform=row.platform,
            manifest=dict(row.manifest),
            control_update_id=row.control_update_id,
            min_app_version=row.min_app_version,
            rollout=rollout,
        )

    # --- choosing -------------------------------------------------------------------------------

    @staticmethod
    def choose(state: ChannelState, req: ManifestRequest) -> Candidate | None:
        """The newest update this device may have: rollouts and minimum versions applied."""
        for cand in state.candidates:
            if cand.group_status != "active" or not meets_min_version(req.app_version, cand.min_app_version):
                continue
            rollout = cand.rollout
            if rollout is None or rollout.status == "completed":
                return cand
            if rollout.status == "active":
                if in_rollout(rollout.salt, req.client_id, rollout.percentage):
                    return cand
                return state.controls.get(cand.control_update_id) if cand.control_update_id else None
            if rollout.status == "halted":
                # Devices already running it are told nothing new (the control is older, so
                # they would reject it anyway); nobody else gets it.
                if req.current_update_id == cand.id:
                    return cand
                return state.controls.get(cand.control_update_id) if cand.control_update_id else None
            # ended, superseded or rolled back: a newer update replaced it; look further.
        return None

    # --- answering ------------------------------------------------------------------------------

    async def answer(self, project_id: int, req: ManifestRequest) -> Answer:
        project = await self.project(project_id)
        channel = req.channel or project.default_channel
        if channel not in project.channels:
            raise NotFound(f"channel {channel!r}")
        signer = project.signer
        if req.expects_signature:
            if signer is None:
                raise BadRequest(
                    "the app expects signed manifests (expo-expect-signature) but this project has no signing "
                    "key; run `shipyard updates signing generate` or turn code signing off in the app",
                    code="signing_not_configured",
                )
            if req.expected_keyid and req.expected_keyid != signer.keyid and not signer.chain_pem:
                raise BadRequest(
                    f"the app expects keyid {req.expected_keyid!r} but this project signs with keyid "
                    f"{signer.keyid!r}; set codeSigningMetadata.keyid to {signer.keyid!r}",
                    code="signing_keyid_mismatch",
                )
        fmt = negotiate(req.accept, req.protocol)
        if fmt is None:
            raise ApiError(
                406, "not_acceptable", "accept must allow multipart/mixed, application/expo+json or application/json"
            )
        state = await self.channel_state(project, channel, req.runtime_version, req.platform)
        headers = {
            "expo-protocol-version": str(req.protocol),
            "expo-sfv-version": "0",
            "expo-manifest-filters": state.filters_header,
            "expo-server-defined-headers": "",
            "cache-control": "private, max-age=0",
            "vary": "accept, expo-channel-name, expo-runtime-version, expo-platform, eas-client-id",
        }
        target = self.choose(state, req)
        signed = req.expects_signature
        if target is None:
            if req.protocol == 0:
                raise NotFound(
                    f"no update for channel {channel!r}, runtime version {req.runtime_version!r} and {req.platform}"
                )
            return self._directive(project, "noUpdateAvailable", None, fmt, signed, headers, "no_update", channel)
        if target.kind == "rollback_to_embedded":
            if req.protocol == 0:
                raise NotFound("rolled back to the embedded update; protocol v0 cannot carry that directive")
            if req.current_update_id is not None and req.current_update_id == req.embedded_update_id:
                return self._directive(project, "noUpdateAvailable", None, fmt, signed, headers, "no_update", channel)
            return self._directive(project, "rollBackToEmbedded", target, fmt, signed, headers, "rollback", channel)
        if req.current_update_id == target.id and req.protocol >= 1:
            return self._directive(project, "noUpdateAvailable", None, fmt, signed, headers, "no_update", channel)
        body, content_type, signature = self._manifest_body(project, target, fmt, signed)
        if signature is not None:
            headers["expo-signature"] = signature
        return Answer(200, body, content_type, headers, target.id, "manifest", channel)

    def _manifest_body(
        self, project: ProjectState, cand: Candidate, fmt: str, signed: bool
    ) -> tuple[bytes, str, str | None]:
        key = (cand.id, fmt, signed)
        hit = project.bodies.get(key)
        if hit is not None:
            return hit
        manifest = orjson.dumps(self._render(project.project_id, cand))
        signature = project.signer.sign(manifest) if signed and project.signer else None
        if fmt == MULTIPART:
            parts = [
                Part("manifest", manifest, "application/json; charset=utf-8", signature),
                Part("extensions", b'{"assetRequestHeaders":{}}'),
            ]
            parts += self._chain(project, signed)
            boundary = uuid.uuid4().hex
            result: tuple[bytes, str, str | None] = (
                multipart_body(parts, boundary),
                f"multipart/mixed; boundary={boundary}",
                None,
            )
        else:
            content_type = "application/expo+json" if fmt == EXPO_JSON else "application/json"
            result = (manifest, content_type + "; charset=utf-8", signature)
        project.bodies[key] = result
        return result

    @staticmethod
    def _chain(project: ProjectState, signed: bool) -> list[Part]:
        if signed and project.signer is not None and project.signer.chain_pem:
            return [Part("certificate_chain", project.signer.chain_pem.encode(), "application/x-pem-file")]
        return []

    def _directive(
        self,
        project: ProjectState,
        kind: str,
        cand: Candidate | None,
        fmt: str,
        signed: bool,
        headers: dict[str, str],
        outcome: str,
        channel: str,
    ) -> Answer:
        if fmt != MULTIPART:
            if kind == "noUpdateAvailable":
                # A JSON-only client cannot take a directive; 204 with protocol ≥ 1 means "nothing new".
                return Answer(204, b"", None, headers, None, outcome, channel)
            raise ApiError(406, "not_acceptable", "this answer is a directive, which needs accept: multipart/mixed")
        key = (f"directive:{kind}:{cand.id if cand else ''}", fmt, signed)
        hit = project.bodies.get(key)
        if hit is None:
            directive: dict[str, Any] = {"type": kind}
            if kind == "rollBackToEmbedded" and cand is not None:
                directive["parameters"] = {"commitTime": iso_ms(cand.created_at)}
            body = orjson.dumps(directive)
            signature = project.signer.sign(body) if signed and project.signer else None
            parts = [Part("directive", body, "application/json; charset=utf-8", signature)]
            parts += self._chain(project, signed)
            boundary = uuid.uuid4().hex
            hit = (multipart_body(parts, boundary), f"multipart/mixed; boundary={boundary}", None)
            project.bodies[key] = hit
        return Answer(200, hit[0], hit[1], headers, None, outcome, channel)

    def _render(self, project_id: int, cand: Candidate) -> dict[str, Any]:
        base = f"{self.ctx.settings.public_base}/updates/{project_id}/assets/"

        def asset(entry: dict[str, Any], launch: bool) -> dict[str, Any]:
            out = {"hash": entry["hash"], "key": entry["key"], "contentType": entry["contentType"]}
            if not launch and entry.get("fileExtension"):
                out["fileExtension"] = entry["fileExtension"]
            out["url"] = base + entry["storage_key"]
            return out

        body = cand.manifest
        return {
            "id": cand.id,
            "createdAt": iso_ms(cand.created_at),
            "runtimeVersion": cand.runtime_version,
            "launchAsset": asset(body["launchAsset"], True),
            "assets": [asset(a, False) for a in body.get("assets", [])],
            "metadata": body.get("metadata", {}),
            "extra": body.get("extra", {}),
        }


def resolver(ctx: Context) -> Resolver:
    found = ctx.extras.get("updates_resolver")
    if found is None:
        found = ctx.extras["updates_resolver"] = Resolver(ctx)
    return found
