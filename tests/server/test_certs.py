import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from server.certs import CertificateError, create_certificates


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
    [({"hosts": ["a b"]}, "--host"), ({"days": 0}, "--days"), ({"hosts": []}, "--host")],
)
def test_bad_requests_name_the_flag(tmp_path, kwargs, flag):
    with pytest.raises(CertificateError, match=flag):
        create_certificates(tmp_path, **kwargs)
