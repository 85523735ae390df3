"""Code signing for manifests and directives (Expo Updates spec v1 §Code Signing).

The signature is RSASSA-PKCS1-v1_5 over SHA-256 of the exact bytes of the manifest or
directive part, sent as ``expo-signature: sig="<base64>", keyid="<keyid>", alg="rsa-v1_5-sha256"``.
The app embeds the certificate (``codeSigningCertificate``) and its key id
(``codeSigningMetadata.keyid``). Certificates are generated the way
``npx expo-updates codesigning:generate`` does: self-signed, key usage digitalSignature
and extended key usage codeSigning, both critical.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from shipyard.core.context import Context
from shipyard.core.db import utcnow
from shipyard.core.errors import BadRequest, NotFound
from shipyard.updates.models import signing_keys
from shipyard.updates.protocol import serialize_dictionary

ALG = "rsa-v1_5-sha256"


@dataclass(frozen=True)
class Signer:
    keyid: str
    private_key: rsa.RSAPrivateKey
    certificate_pem: str
    chain_pem: str | None

    def sign(self, data: bytes) -> str:
        """The ``expo-signature`` structured header value for ``data``."""
        signature = self.private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return serialize_dictionary({"sig": base64.b64encode(signature).decode(), "keyid": self.keyid, "alg": ALG})


def generate_key_and_certificate(
    common_name: str, validity_years: int = 10, key_size: int = 2048
) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=365 * validity_years))
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def private_key_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def certificate_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _load_private_key(pem: str) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"the private key is not an unencrypted PEM key: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise BadRequest("the private key must be an RSA key (expo-updates verifies rsa-v1_5-sha256)")
    return key


def _check_certificate(pem: str, key: rsa.RSAPrivateKey) -> x509.Certificate:
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError as exc:
        raise BadRequest(f"the certificate is not a PEM X.509 certificate: {exc}") from None
    if cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
        raise BadRequest("the certificate does not match the private key")
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise BadRequest("the certificate lacks the codeSigning extended key usage expo-updates requires") from None
    if ExtendedKeyUsageOID.CODE_SIGNING not in eku:
        raise BadRequest("the certificate lacks the codeSigning extended key usage expo-updates requires")
    return cert


def _check_chain(pem: str) -> str:
    try:
        certs = x509.load_pem_x509_certificates(pem.encode())
    except ValueError as exc:
        raise BadRequest(f"the certificate chain is not PEM: {exc}") from None
    if not certs:
        raise BadRequest("the certificate chain is empty")
    return "".join(certificate_pem(c) for c in certs)


async def store_key(
    conn: AsyncConnection,
    ctx: Context,
    project_id: int,
    *,
    keyid: str,
    key_pem: str,
    cert_pem: str,
    chain_pem: str | None = None,
) -> dict[str, Any]:
    """Store a key pair as the project's active one (older ones are deactivated)."""
    if not keyid or len(keyid) > 100 or any(not (" " < ch <= "~") or ch in '"\\' for ch in keyid):
        raise BadRequest("keyid must be 1–100 printable characters without quotes or spaces")
    key = _load_private_key(key_pem)
    cert = _check_certificate(cert_pem, key)
    chain = _check_chain(chain_pem) if chain_pem else None
    await conn.execute(update(signing_keys).where(signing_keys.c.project_id == project_id).values(active=False))
    key_id = (
        await conn.execute(
            signing_keys.insert()
            .values(
                project_id=project_id,
                keyid=keyid,
                private_key_enc=ctx.box.encrypt(private_key_pem(key)),
                certificate_pem=certificate_pem(cert),
                chain_pem=chain,
                active=True,
                created_at=utcnow(),
            )
            .returning(signing_keys.c.id)
        )
    ).scalar_one()
    return describe(key_id, keyid, cert, chain is not None)


def describe(key_id: int, keyid: str, cert: x509.Certificate, has_chain: bool) -> dict[str, Any]:
    return {
        "id": key_id,
        "keyid": keyid,
        "certificate_pem": certificate_pem(cert),
        "subject": cert.subject.rfc4514_string(),
        "not_valid_after": cert.not_valid_after_utc.isoformat(),
        "fingerprint_sha256": cert.fingerprint(hashes.SHA256()).hex(),
        "certificate_chain": has_chain,
        "alg": ALG,
    }


async def generate(
    conn: AsyncConnection, ctx: Context, project_id: int, *, keyid: str = "main", common_name: str, years: int = 10
) -> dict[str, Any]:
    if not 1 <= years <= 30:
        raise BadRequest("validity must be between 1 and 30 years")
    key, cert = generate_key_and_certificate(common_name, years)
    return await store_key(
        conn, ctx, project_id, keyid=keyid, key_pem=private_key_pem(key), cert_pem=certificate_pem(cert)
    )


async def active_key_info(conn: AsyncConnection, project_id: int) -> dict[str, Any]:
    row = (
        await conn.execute(
            select(signing_keys).where(signing_keys.c.project_id == project_id, signing_keys.c.active.is_(True))
        )
    ).first()
    if row is None:
        raise NotFound("signing key")
    cert = x509.load_pem_x509_certificate(row.certificate_pem.encode())
    return describe(row.id, row.keyid, cert, row.chain_pem is not None)


async def load_signer(conn: AsyncConnection, ctx: Context, project_id: int) -> Signer | None:
    row = (
        await conn.execute(
            select(signing_keys).where(signing_keys.c.project_id == project_id, signing_keys.c.active.is_(True))
        )
    ).first()
    if row is None:
        return None
    # Decrypting and parsing an RSA key costs milliseconds of CPU on the event loop; the
    # manifest cache reloads a project every few seconds, so keep the parsed key per key row.
    cache: dict[Any, Signer] = ctx.extras.setdefault("updates_signers", {})
    ident = (
        project_id,
        row.id,
        row.keyid,
        hashlib.sha256(str(row.private_key_enc).encode()).hexdigest(),
        row.chain_pem,
    )
    found = cache.get(ident)
    if found is None:
        key = _load_private_key(ctx.box.decrypt(row.private_key_enc))
        if len(cache) > 1000:
            cache.clear()
        found = cache[ident] = Signer(row.keyid, key, row.certificate_pem, row.chain_pem)
    return found


async def remove_key(conn: AsyncConnection, project_id: int) -> bool:
    result = await conn.execute(
        update(signing_keys)
        .where(signing_keys.c.project_id == project_id, signing_keys.c.active.is_(True))
        .values(active=False)
    )
    return bool(result.rowcount)
