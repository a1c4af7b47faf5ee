import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from pollen.cli import app
from server.certs import CertificateError, check_certificates, create_certificates


def test_server_certificate_is_signed_by_the_ca_for_the_given_hosts(tmp_path):
    paths = create_certificates(tmp_path, hosts=["pollen.example", "10.0.0.7"], nodes=2)
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["pollen.example"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for key in (paths.ca_key, paths.server_key, *(p for p, _ in paths.node_keys)):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    private, public = paths.node_keys[1]
    node_key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    assert isinstance(node_key, ec.EllipticCurvePrivateKey) and node_key.curve.name == "secp384r1"
    assert public.read_text().startswith("ecdsa-sha2-nistp384 ")


def test_existing_certificates_are_kept_unless_forced(tmp_path):
    first = create_certificates(tmp_path).ca_cert.read_bytes()
    with pytest.raises(CertificateError, match="--force"):
        create_certificates(tmp_path)
    assert create_certificates(tmp_path, overwrite=True).ca_cert.read_bytes() != first


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"hosts": ["a b"]}, "--host"),
        ({"days": 0}, "--days"),
        ({"days": 10**8}, "--days"),
        ({"hosts": []}, "--host"),
    ],
)
def test_bad_requests_name_the_flag(tmp_path, kwargs, flag):
    with pytest.raises(CertificateError, match=flag):
        create_certificates(tmp_path, **kwargs)


def _private_keys(paths):
    return (paths.ca_key, paths.server_key, *(private for private, _ in paths.node_keys))


def test_force_makes_every_private_key_0600_even_over_a_0644_file(tmp_path):
    old = create_certificates(tmp_path, nodes=2)
    before = {key: key.read_bytes() for key in _private_keys(old)}
    for key in before:
        key.chmod(0o644)
    new = create_certificates(tmp_path, nodes=2, overwrite=True)
    for key, content in before.items():
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
        assert key.read_bytes() != content, key  # a new key, not the old file rewritten
    assert _private_keys(new) == tuple(before)


def test_an_existing_node_key_is_kept_unless_forced(tmp_path):
    precious = tmp_path / "node-1.key"
    precious.write_bytes(b"a device's registered key\n")
    with pytest.raises(CertificateError, match=r"node-1\.key already exists; pass --force"):
        create_certificates(tmp_path, nodes=2)
    assert precious.read_bytes() == b"a device's registered key\n"
    assert not (tmp_path / "ca.crt").exists()  # refused before writing anything
    (tmp_path / "node-1.key").unlink()
    (tmp_path / "node-0.pub").write_text("ssh-ed25519 AAAA old\n")
    with pytest.raises(CertificateError, match=r"node-0\.pub already exists"):
        create_certificates(tmp_path, nodes=1)


def test_force_replaces_a_planted_symlink_instead_of_writing_through_it(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_bytes(b"not yours\n")
    out = tmp_path / "certs"
    create_certificates(out, nodes=1)
    (out / "node-0.key").unlink()
    (out / "node-0.key").symlink_to(target)
    create_certificates(out, nodes=1, overwrite=True)
    assert target.read_bytes() == b"not yours\n"
    assert not (out / "node-0.key").is_symlink()
    assert stat.S_IMODE((out / "node-0.key").stat().st_mode) == 0o600


def test_certs_command_refuses_an_existing_node_key_in_one_line(tmp_path):
    (tmp_path / "node-0.key").write_text("kept\n")
    out = CliRunner().invoke(app, ["certs", "--out", str(tmp_path), "--nodes", "1"])
    assert out.exit_code == 2, out.output
    assert out.output.strip().count("\n") == 0 and "node-0.key already exists" in out.output
    assert (tmp_path / "node-0.key").read_text() == "kept\n"


@pytest.fixture
def two_sets(tmp_path):
    return create_certificates(tmp_path / "a", hosts=["10.1.2.3", "localhost"]), (
        create_certificates(tmp_path / "b")
    )


def test_check_certificates_accepts_a_set_for_its_hosts(two_sets):
    good, _ = two_sets
    check_certificates(good.ca_cert.parent, "10.1.2.3")
    check_certificates(good.ca_cert.parent, "LocalHost")


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("garbage-ca", r"ca\.crt is not a PEM certificate"),
        ("garbage-cert", r"server\.pem is not a PEM certificate"),
        ("garbage-key", r"server\.key is not an unencrypted PEM private key"),
        ("other-ca", r"server\.pem is not signed by .*ca\.crt"),
        ("other-key", r"server\.key is not the key of .*server\.pem"),
        ("other-host", r"server\.pem is not issued for 127\.0\.0\.1 \(it names 10\.1\.2\.3, local"),
        ("missing-key", r"cannot read .*server\.key"),
    ],
)  # fmt: skip
def test_check_certificates_names_the_file_that_is_wrong(two_sets, damage, match):
    good, other = two_sets
    folder, host = good.ca_cert.parent, "localhost"
    if damage == "garbage-ca":
        good.ca_cert.write_bytes(b"garbage\n")
    elif damage == "garbage-cert":
        good.server_cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n")
    elif damage == "garbage-key":
        good.server_key.write_bytes(b"\x00\x01")
    elif damage == "other-ca":
        good.ca_cert.write_bytes(other.ca_cert.read_bytes())
    elif damage == "other-key":
        good.server_key.write_bytes(other.server_key.read_bytes())
    elif damage == "other-host":
        host = "127.0.0.1"
    elif damage == "missing-key":
        good.server_key.unlink()
    with pytest.raises(CertificateError, match=match) as caught:
        check_certificates(folder, host)
    assert "\n" not in str(caught.value) and "pollen certs --out" in str(caught.value)
