"""The admin API over a real socket on 127.0.0.1 with TLS 1.3 (a certificate made here with
`cryptography`, a verifying `ssl` client): login with TOTP, a template route, 401/403/404/405,
and a TLS 1.2-only client refused."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
from pathlib import Path

import pyotp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from vaultpbx.api.server import AdminHttpServer

from .api_helpers import PASSWORD, RECORDING_ID, SECRETS, Harness, make_harness


def make_certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vaultpbx admin test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "admin.crt", directory / "admin.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class Client:
    """HTTP/1.1 keep-alive over one TLS connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def call(self, method: str, target: str, *, token: str | None = None,
                   payload: object = None) -> tuple[int, dict[str, str], bytes]:
        data = b"" if payload is None else json.dumps(payload).encode()
        head = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1",
                f"Content-Length: {len(data)}"]
        if token:
            head.append(f"Authorization: Bearer {token}")
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        await self.writer.drain()
        raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        lines = raw.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await self.reader.readexactly(int(headers["content-length"]))
        return int(lines[0].split()[1]), headers, body


async def _scenario(h: Harness, server_ctx: ssl.SSLContext, cert: Path) -> None:
    server = AdminHttpServer(h.api.routes(), middlewares=h.api.middlewares(),
                             executor=h.api.workers)
    host, port = await server.start("127.0.0.1", 0, server_ctx)
    try:
        client_ctx = ssl.create_default_context(cafile=str(cert))
        client_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        reader, writer = await asyncio.open_connection(host, port, ssl=client_ctx)
        assert writer.get_extra_info("ssl_object").version() == "TLSv1.3"
        client = Client(reader, writer)

        status, _, body = await client.call("POST", "/login", payload={
            "user": "admin", "password": PASSWORD})
        assert (status, json.loads(body)["second_factor_required"]) == (401, True)
        h.clock.advance(30)
        otp = pyotp.TOTP(SECRETS["admin"]).at(h.clock.now)
        status, headers, body = await client.call("POST", "/login", payload={
            "user": "admin", "password": PASSWORD, "otp": otp})
        assert status == 200 and headers["cache-control"] == "no-store"
        token = json.loads(body)["token"]

        status, _, body = await client.call("GET", "/me", token=token)
        assert status == 200 and json.loads(body)["role"] == "admin"
        status, _, body = await client.call(
            "POST", f"/recordings/{RECORDING_ID}/export-requests", token=token)
        assert status == 201 and json.loads(body)["id"].startswith("apr-")
        status, _, _ = await client.call("GET", f"/recordings/{RECORDING_ID}/export",
                                         token=token)
        assert status == 403  # no approval
        assert (await client.call("GET", "/audit", token=token))[0] == 403
        assert (await client.call("GET", "/calls"))[0] == 401
        assert (await client.call("GET", "/nowhere", token=token))[0] == 404
        assert (await client.call("DELETE", f"/recordings/{RECORDING_ID}/export",
                                  token=token))[0] == 405
        writer.close()

        # A client that speaks at most TLS 1.2 gets no connection at all.
        old = ssl.create_default_context(cafile=str(cert))
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, ConnectionError)):  # alert or reset, by timing
            await asyncio.open_connection(host, port, ssl=old)
    finally:
        await server.close()


def test_admin_api_over_tls13(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    server_ctx.load_cert_chain(str(cert), str(key))
    h = make_harness(tmp_path / "api")
    asyncio.run(asyncio.wait_for(_scenario(h, server_ctx, cert), 30))
    h.audit.close()
