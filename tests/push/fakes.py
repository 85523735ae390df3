"""Local fake Expo Push API, FCM HTTP v1 (with its OAuth token endpoint) and APNs (HTTP/2,
TLS, ES256 provider tokens) implementing the documented requests, responses and error
codes from the research notes. Tests configure per-token behaviours and outages and
read back what each fake received.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import ipaddress
import itertools
import json
import ssl
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

# --- Expo -------------------------------------------------------------------------------------


class FakeExpo:
    """``/--/api/v2/push/send`` and ``/getReceipts`` as Expo documents them."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []  # every message accepted (ticket ok)
        self.requests = 0
        self.send_requests = 0
        self.failed_requests = 0
        self.gzip_requests = 0
        self.ticket_errors: dict[str, str] = {}  # token -> ticket error (DeviceNotRegistered, …)
        self.receipt_errors: dict[str, str] = {}  # token -> receipt error
        self.fail_until = 0.0  # monotonic time until which every request gets 503
        self.rate_limit_once: set[str] = set()  # tokens answered MessageRateExceeded once
        self.required_token: str | None = None
        self.request_error: tuple[int, str, dict[str, str]] | None = None  # (status, code, headers)
        self.tickets: dict[str, dict[str, Any]] = {}
        self.max_batch = 0
        self.app = Starlette(
            routes=[
                Route("/--/api/v2/push/send", self.send, methods=["POST"]),
                Route("/--/api/v2/push/getReceipts", self.get_receipts, methods=["POST"]),
            ]
        )

    def delivered_ids(self) -> Counter[str]:
        return Counter(m.get("data", {}).get("_sid") for m in self.received)

    async def _body(self, request: Request) -> Any:
        raw = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            self.gzip_requests += 1
            raw = gzip.decompress(raw)
        return json.loads(raw)

    def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
        return JSONResponse({"errors": [{"code": code, "message": message}]}, status_code=status, headers=headers)

    async def send(self, request: Request) -> Response:
        self.requests += 1
        self.send_requests += 1
        if time.monotonic() < self.fail_until:
            self.failed_requests += 1
            return self._error(503, "INTERNAL_SERVER_ERROR", "The service is temporarily unavailable")
        if self.request_error is not None:
            status, code, headers = self.request_error
            return self._error(status, code, f"{code} (fake)", headers)
        if self.required_token and request.headers.get("authorization") != f"Bearer {self.required_token}":
            return self._error(401, "UNAUTHORIZED", "The bearer token is invalid")
        if request.headers.get("content-type", "").split(";")[0] != "application/json":
            return self._error(400, "API_ERROR", "content-type must be application/json")
        body = await self._body(request)
        items = body if isinstance(body, list) else [body]
        expanded = []
        for item in items:
            to = item.get("to")
            if not to:
                return self._error(400, "API_ERROR", 'child "to" fails because ["to" is required]')
            for token in to if isinstance(to, list) else [to]:
                expanded.append({**item, "to": token})
        if len(expanded) > 100:
            return self._error(
                400,
                "PUSH_TOO_MANY_NOTIFICATIONS",
                "You are trying to send more than 100 push notifications in one request",
            )
        self.max_batch = max(self.max_batch, len(expanded))
        tickets = []
        for msg in expanded:
            token = msg["to"]
            error = self.ticket_errors.get(token)
            if token in self.rate_limit_once:
                self.rate_limit_once.discard(token)
                error = "MessageRateExceeded"
            if not token.startswith(("ExponentPushToken[", "ExpoPushToken[")):
                error = "DeviceNotRegistered"
            if len(json.dumps(msg).encode()) > 4096:
                error = "MessageTooBig"
            if error:
                tickets.append(
                    {
                        "status": "error",
                        "message": f'"{token}" error: {error}',
                        "details": {"error": error, "expoPushToken": token},
                    }
                )
                continue
            ticket_id = str(uuid.uuid4())
            self.received.append(msg)
            receipt_error = self.receipt_errors.get(token)
            self.tickets[ticket_id] = (
                {"status": "ok"}
                if receipt_error is None
                else {
                    "status": "error",
                    "message": f"{receipt_error} (fake)",
                    "details": {"error": receipt_error, "expoPushToken": token},
                }
            )
            tickets.append({"status": "ok", "id": ticket_id})
        return JSONResponse({"data": tickets})

    async def get_receipts(self, request: Request) -> Response:
        self.requests += 1
        if time.monotonic() < self.fail_until:
            self.failed_requests += 1
            return self._error(503, "INTERNAL_SERVER_ERROR", "The service is temporarily unavailable")
        body = await self._body(request)
        ids = body.get("ids") or []
        if len(ids) > 1000:
            return self._error(400, "PUSH_TOO_MANY_RECEIPTS", "more than 1000 receipt ids")
        return JSONResponse({"data": {i: self.tickets[i] for i in ids if i in self.tickets}})


# --- FCM --------------------------------------------------------------------------------------


def service_account(token_uri: str) -> tuple[dict[str, Any], Any]:
    """A service-account JSON with a fresh RSA key; returns (json, public key)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    account = {
        "type": "service_account",
        "project_id": "canabro-test",
        "private_key_id": uuid.uuid4().hex,
        "private_key": pem,
        "client_email": "push@canabro-test.iam.gserviceaccount.com",
        "token_uri": token_uri,
    }
    return account, key.public_key()


class FakeFcm:
    """``POST /token`` (JWT bearer grant) and ``POST /v1/projects/{id}/messages:send``."""

    def __init__(self) -> None:
        self.public_key: Any = None
        self.client_email = ""
        self.tokens_minted = 0
        self.access_tokens: set[str] = set()
        self.received: list[dict[str, Any]] = []
        self.errors: dict[str, tuple[int, str, str]] = {}  # device token -> (status, errorCode, message)
        self.once: set[str] = set()  # device tokens whose error happens only once
        self.app = Starlette(
            routes=[
                Route("/token", self.token, methods=["POST"]),
                Route("/v1/projects/{project}/messages:send", self.send, methods=["POST"]),
            ]
        )

    async def token(self, request: Request) -> Response:
        form = await request.form()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        try:
            claims = jwt.decode(
                str(form.get("assertion")), self.public_key, algorithms=["RS256"], audience=str(request.url)
            )
        except jwt.InvalidTokenError as exc:
            return JSONResponse({"error": "invalid_grant", "error_description": str(exc)}, status_code=400)
        if claims.get("iss") != self.client_email or "firebase.messaging" not in claims.get("scope", ""):
            return JSONResponse({"error": "invalid_grant", "error_description": "bad iss or scope"}, status_code=400)
        self.tokens_minted += 1
        access = f"ya29.fake-{uuid.uuid4().hex}"
        self.access_tokens.add(access)
        return JSONResponse({"access_token": access, "expires_in": 3599, "token_type": "Bearer"})

    def _error(self, status: int, code: str, message: str) -> Response:
        body = {
            "error": {
                "code": status,
                "message": message,
                "status": {
                    400: "INVALID_ARGUMENT",
                    401: "UNAUTHENTICATED",
                    403: "PERMISSION_DENIED",
                    404: "NOT_FOUND",
                    429: "RESOURCE_EXHAUSTED",
                    503: "UNAVAILABLE",
                }.get(status, "INTERNAL"),
                "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}],
            }
        }
        headers = {"retry-after": "1"} if status in (429, 503) else None
        return JSONResponse(body, status_code=status, headers=headers)

    async def send(self, request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.access_tokens:
            return self._error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        body = json.loads(await request.body())
        message = body.get("message") or {}
        token = message.get("token")
        if not token:
            return self._error(400, "INVALID_ARGUMENT", "message.token is required")
        if token in self.errors:
            status, code, text = self.errors[token]
            if token in self.once:
                self.errors.pop(token)
            return self._error(status, code, text)
        if any(not isinstance(v, str) for v in (message.get("data") or {}).values()):
            return self._error(400, "INVALID_ARGUMENT", "data values must be strings")
        self.received.append(message)
        return JSONResponse({"name": f"projects/{request.path_params['project']}/messages/0:{uuid.uuid4().hex}"})


# --- APNs -------------------------------------------------------------------------------------


def apns_key() -> tuple[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return pem, key.public_key()


class FakeApns:
    """``POST /3/device/<token>`` over HTTP/2 with Apple's headers, token auth and reasons."""

    def __init__(self, public_key: Any, key_id: str, team_id: str, bundle_id: str) -> None:
        self.public_key = public_key
        self.key_id = key_id
        self.team_id = team_id
        self.bundle_id = bundle_id
        self.received: list[dict[str, Any]] = []
        self.http_versions: set[str] = set()
        self.errors: dict[str, tuple[int, str]] = {}  # device token -> (status, reason)
        self.timestamps: dict[str, int] = {}  # device token -> ms when it became invalid (410)
        self.provider_tokens: set[str] = set()
        self.app = Starlette(routes=[Route("/3/device/{token}", self.push, methods=["POST"])])

    def _error(self, status: int, reason: str, apns_id: str, timestamp: int | None = None) -> Response:
        body: dict[str, Any] = {"reason": reason}
        if timestamp is not None:
            body["timestamp"] = timestamp
        return JSONResponse(body, status_code=status, headers={"apns-id": apns_id})

    async def push(self, request: Request) -> Response:
        self.http_versions.add(request.scope.get("http_version", "?"))
        apns_id = request.headers.get("apns-id") or str(uuid.uuid4()).upper()
        token = request.path_params["token"]
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            return self._error(403, "MissingProviderToken", apns_id)
        provider_token = auth[7:]
        try:
            header = jwt.get_unverified_header(provider_token)
            claims = jwt.decode(provider_token, self.public_key, algorithms=["ES256"])
        except jwt.InvalidTokenError:
            return self._error(403, "InvalidProviderToken", apns_id)
        if header.get("kid") != self.key_id or claims.get("iss") != self.team_id:
            return self._error(403, "InvalidProviderToken", apns_id)
        if time.time() - int(claims.get("iat", 0)) > 3600:
            return self._error(403, "ExpiredProviderToken", apns_id)
        self.provider_tokens.add(provider_token)
        if request.headers.get("apns-topic") != self.bundle_id:
            return self._error(
                400, "DeviceTokenNotForTopic" if request.headers.get("apns-topic") else "MissingTopic", apns_id
            )
        if request.headers.get("apns-push-type") not in ("alert", "background"):
            return self._error(400, "InvalidPushType", apns_id)
        body = await request.body()
        if not body:
            return self._error(400, "PayloadEmpty", apns_id)
        if len(body) > 4096:
            return self._error(413, "PayloadTooLarge", apns_id)
        if token in self.errors:
            status, reason = self.errors[token]
            return self._error(status, reason, apns_id, self.timestamps.get(token))
        if not all(c in "0123456789abcdefABCDEF" for c in token):
            return self._error(400, "BadDeviceToken", apns_id)
        self.received.append({"token": token, "headers": dict(request.headers), "payload": json.loads(body)})
        return Response(status_code=200, headers={"apns-id": apns_id})


# --- running the fakes ---------------------------------------------------------------------------


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


_ports = itertools.count(0)


@contextmanager
def serve_http2(app: Any) -> Iterator[tuple[str, ssl.SSLContext]]:
    """Serve ``app`` with hypercorn over TLS with ALPN h2; yields (url, client SSL context)."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    from tests.conftest import free_port

    with tempfile.TemporaryDirectory() as tmp:
        cert, key = self_signed_cert(Path(tmp))
        port = free_port()
        config = Config()
        config.bind = [f"127.0.0.1:{port}"]
        config.certfile, config.keyfile = str(cert), str(key)
        config.alpn_protocols = ["h2"]
        config.loglevel = "WARNING"
        config.accesslog = None
        config.graceful_timeout = 1.0
        loop = asyncio.new_event_loop()
        stop = asyncio.Event()
        ready = threading.Event()

        async def main() -> None:
            ready.set()
            await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

        thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
        thread.start()
        ready.wait(10)
        deadline = time.monotonic() + 10
        import socket

        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.02)
        client_ssl = ssl.create_default_context(cafile=str(cert))
        try:
            yield f"https://127.0.0.1:{port}", client_ssl
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join(timeout=10)
