"""The CLI against a real `shipyard serve` process: signing key, publish of an export,
a signed manifest fetched over HTTP, rollout steering and history."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from tests.updates.helpers import expo_headers, make_export, parse_multipart


def shipyard(server: Any, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**server.env, "SHIPYARD_URL": server.url, "SHIPYARD_KEY": server.creds["secret_key"]}
    result = subprocess.run(
        [sys.executable, "-m", "shipyard.cli", "updates", *args], env=env, capture_output=True, text=True, timeout=120
    )
    if check:
        assert result.returncode == 0, result.stderr + result.stdout
    return result


@pytest.mark.slow
def test_cli_publish_sign_and_steer(live_server: Any, tmp_path: Path) -> None:
    slug = live_server.creds["project_slug"]
    project_id = live_server.creds["project_id"]
    cert_file = tmp_path / "certificate.pem"
    generated = shipyard(live_server, "signing", "generate", "--project", slug, "--output", str(cert_file))
    assert "keyid main" in generated.stderr and "codeSigningCertificate" in generated.stderr
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())

    first = shipyard(
        live_server,
        "publish",
        str(make_export(tmp_path, "v1")),
        "-p",
        slug,
        "-c",
        "production",
        "-m",
        "first release",
        "--json",
    )
    v1 = json.loads(first.stdout)
    assert "to upload" in first.stderr
    second = shipyard(
        live_server,
        "publish",
        str(make_export(tmp_path, "v2")),
        "-p",
        slug,
        "-c",
        "production",
        "-m",
        "second",
        "--rollout",
        "50",
    )
    assert "rolling out to 50 %" in second.stdout
    assert "1 already on the server" in second.stderr  # the shared icon was not uploaded again
    blocked = shipyard(
        live_server, "publish", str(make_export(tmp_path, "v3")), "-p", slug, "-c", "production", check=False
    )
    assert blocked.returncode != 0 and "--supersede-rollout" in blocked.stderr

    headers = expo_headers(client_id=str(uuid.uuid4()), keyid="main")
    response = httpx.get(live_server.creds["manifest_url"], headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert live_server.creds["manifest_url"] == f"{live_server.url}/updates/{project_id}/manifest"
    part = parse_multipart(response)["manifest"]
    sig = part.headers["expo-signature"].split('sig="')[1].split('"')[0]
    cert.public_key().verify(base64.b64decode(sig), part.body, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr]
    manifest = json.loads(part.body)
    asset = httpx.get(manifest["launchAsset"]["url"], timeout=10)
    assert asset.status_code == 200 and asset.headers["cache-control"].endswith("immutable")

    rollouts = json.loads(shipyard(live_server, "rollout", "list", "-p", slug, "--json").stdout)["data"]
    group = rollouts[0]["group_id"]
    assert rollouts[0]["percentage"] == 50
    halted = shipyard(live_server, "rollout", "halt", group, "-p", slug, "--reason", "manual check")
    assert "halted" in halted.stdout
    rolled = shipyard(live_server, "rollback", "-p", slug, "-c", "production", "--reason", "bad")
    assert group in rolled.stdout
    history = shipyard(live_server, "history", "-p", slug)
    assert "rolled_back" in history.stdout and "first release" in history.stdout
    assert v1["channel"] == "production"
