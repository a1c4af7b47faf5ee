"""Certificates and keys for a TLS SuperLink with SuperNode authentication (``pollen certs``).

Made with ``cryptography``: a self-signed CA (EC P-256), a SuperLink certificate signed by it
with the given host names / IP addresses as subjectAltNames and the serverAuth extended key
usage (what Flower's gRPC and HTTP endpoints check), and optionally one EC P-384 key pair per
SuperNode in OpenSSH format, the form ``flwr supernode register`` and
``flower-supernode --auth-supernode-private-key`` take. Private keys are written mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")


class CertificateError(ValueError):
    """Certificates cannot be made as asked; the message says what to change."""


@dataclass(frozen=True)
class CertificatePaths:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    node_keys: tuple[tuple[Path, Path], ...] = ()  # (private, public) per SuperNode


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not host or any(c.isspace() for c in host):
                raise CertificateError(
                    f"--host {host!r} is neither an IP address nor a DNS name"
                ) from None
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


def _write_key(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def create_certificates(
    out_dir: Path,
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = 365,
    nodes: int = 0,
    overwrite: bool = False,
) -> CertificatePaths:
    """Write ca.crt/ca.key, server.pem/server.key and node-I.key/.pub into ``out_dir``."""
    if days < 1:
        raise CertificateError(f"--days must be >= 1, got {days}")
    if nodes < 0:
        raise CertificateError(f"--nodes must be >= 0, got {nodes}")
    if not hosts:
        raise CertificateError("give at least one --host the SuperLink is reached at")
    san = _san(hosts)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = CertificatePaths(
        ca_cert=out_dir / "ca.crt",
        ca_key=out_dir / "ca.key",
        server_cert=out_dir / "server.pem",
        server_key=out_dir / "server.key",
        node_keys=tuple(
            (out_dir / f"node-{i}.key", out_dir / f"node-{i}.pub") for i in range(nodes)
        ),
    )
    existing = [
        p for p in (paths.ca_cert, paths.ca_key, paths.server_cert, paths.server_key) if p.exists()
    ]
    if existing and not overwrite:
        raise CertificateError(
            f"{existing[0]} already exists; pass --force to replace the certificates in {out_dir}"
        )
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("Pollen CA"))
        .issuer_name(_name("Pollen CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(paths.ca_key, _pem_key(ca_key))
    paths.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(paths.server_key, _pem_key(server_key))
    for private_path, public_path in paths.node_keys:
        node_key = ec.generate_private_key(ec.SECP384R1())
        _write_key(
            private_path,
            node_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            ),
        )
        public_path.write_bytes(
            node_key.public_key().public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            )
            + b"\n"
        )
    return paths
