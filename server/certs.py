"""Certificates and keys for a TLS SuperLink with SuperNode authentication (``pollen certs``).

Made with ``cryptography``: a self-signed CA (EC P-256), a SuperLink certificate signed by it
with the given host names / IP addresses as subjectAltNames and the serverAuth extended key
usage (what Flower's gRPC and HTTP endpoints check), and optionally one EC P-384 key pair per
SuperNode in OpenSSH format, the form ``flwr supernode register`` and
``flower-supernode --auth-supernode-private-key`` take. Private keys are created afresh
(``O_EXCL``, mode 0600 whatever the umask or the mode of a file they replace); existing files,
node keys included, are replaced only with ``--force``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
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


MAX_DAYS = 100 * 366  # a certificate valid for up to a century


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
    """Create ``path`` afresh, mode 0600 before a byte is written.

    ``O_EXCL`` refuses a file (or a symlink planted) in its place, so a replaced key never keeps
    the old file's mode or owner; ``fchmod`` makes it 0600 whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)
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
    if not 1 <= days <= MAX_DAYS:  # X.509 dates end in 9999
        raise CertificateError(f"--days must be in [1, {MAX_DAYS}], got {days}")
    if nodes < 0:
        raise CertificateError(f"--nodes must be >= 0, got {nodes}")
    if not hosts:
        raise CertificateError("give at least one --host the SuperLink is reached at")
    san = _san(hosts)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CertificateError(f"cannot create --out {out_dir}: {err.strerror}") from None
    paths = CertificatePaths(
        ca_cert=out_dir / "ca.crt",
        ca_key=out_dir / "ca.key",
        server_cert=out_dir / "server.pem",
        server_key=out_dir / "server.key",
        node_keys=tuple(
            (out_dir / f"node-{i}.key", out_dir / f"node-{i}.pub") for i in range(nodes)
        ),
    )
    every = (
        paths.ca_cert, paths.ca_key, paths.server_cert, paths.server_key,
        *(p for pair in paths.node_keys for p in pair),
    )  # fmt: skip
    existing = [p for p in every if p.exists() or p.is_symlink()]
    if existing and not overwrite:
        raise CertificateError(
            f"{existing[0]} already exists; pass --force to replace the certificates and keys "
            f"in {out_dir}"
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
    files: list[tuple[Path, bytes, bool]] = [  # (path, content, private)
        (paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), False),
        (paths.ca_key, _pem_key(ca_key), True),
        (paths.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), False),
        (paths.server_key, _pem_key(server_key), True),
    ]
    for private_path, public_path in paths.node_keys:
        node_key = ec.generate_private_key(ec.SECP384R1())
        private = node_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        public = node_key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        files += [(private_path, private, True), (public_path, public + b"\n", False)]
    for path, data, private in files:
        try:
            path.unlink(missing_ok=True)  # only with --force: existing files were refused above
            if private:
                _write_key(path, data)
            else:
                path.write_bytes(data)
        except OSError as err:
            raise CertificateError(f"cannot write {path}: {err.strerror}") from None
    return paths


def check_certificates(folder: Path, host: str) -> None:
    """Refuse, naming the file, what would stop a TLS SuperLink at ``host`` from answering.

    ``ca.crt`` and ``server.pem`` must be PEM certificates, ``server.key`` the private key of
    ``server.pem``, ``server.pem`` signed by ``ca.crt``, valid now, and issued for ``host`` (an IP
    address or a DNS name, the address this machine's CLI uses). Otherwise the SuperLink starts
    but no client, health probe or ``flwr`` call can talk to it.
    """
    ca_path, cert_path, key_path = folder / "ca.crt", folder / "server.pem", folder / "server.key"
    remake = f"remake them with `pollen certs --out {folder} --host {host} --force`"

    def read(path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as err:
            raise CertificateError(f"cannot read {path} ({err.strerror}); {remake}") from None

    certs: list[x509.Certificate] = []
    for path in (ca_path, cert_path):
        data = read(path)  # a CertificateError, itself a ValueError: outside the try below
        try:
            certs.append(x509.load_pem_x509_certificate(data))
        except ValueError:
            raise CertificateError(f"{path} is not a PEM certificate; {remake}") from None
    ca, server = certs
    data = read(key_path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise CertificateError(
            f"{key_path} is not an unencrypted PEM private key; {remake}"
        ) from None
    if key.public_key() != server.public_key():
        raise CertificateError(f"{key_path} is not the key of {cert_path}; {remake}")
    try:
        server.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise CertificateError(f"{cert_path} is not signed by {ca_path}; {remake}") from None
    now = dt.datetime.now(dt.UTC)
    for path, cert in ((ca_path, ca), (cert_path, server)):
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise CertificateError(
                f"{path} is valid only from {cert.not_valid_before_utc:%Y-%m-%d} to "
                f"{cert.not_valid_after_utc:%Y-%m-%d}; {remake}"
            )
    try:
        names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CertificateError(f"{cert_path} names no host (no subjectAltName); {remake}") from None
    try:
        covered = ipaddress.ip_address(host) in names.get_values_for_type(x509.IPAddress)
    except ValueError:
        covered = host.lower() in (n.lower() for n in names.get_values_for_type(x509.DNSName))
    if not covered:
        listed = [str(v) for v in names.get_values_for_type(x509.IPAddress)]
        listed += names.get_values_for_type(x509.DNSName)
        raise CertificateError(
            f"{cert_path} is not issued for {host} (it names {', '.join(listed)}); {remake}"
        )
