"""A cluster's certificate authority: the CA and the certificates it signs, for etcd and PostgreSQL.

``ensure_ca(dir)`` makes ``ca.key`` (0600) and ``ca.crt`` once and keeps them; ``ensure_certificate``
makes ``<name>.key`` and ``<name>.crt`` signed by it, and makes them again only when the CA, the
names or the usage changed or less than ``renew_days`` remain. Keys are ECDSA P-256.

Certificates for etcd *clients* have an empty subject common name on purpose: etcd's JSON gateway
(the API pgha's store client speaks) refuses client certificates with a common name when
client-certificate authentication is on; the client then authenticates with a user and password
over the verified TLS connection.

Needs the ``cryptography`` package (a dependency of ansible-core, so present where the collection's
modules run on the controller); the agents themselves never import this module.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

CA_DAYS = 3650
CERT_DAYS = 825
RENEW_DAYS = 30


@dataclass(frozen=True)
class Authority:
    key_pem: bytes
    cert_pem: bytes


def _x509():  # imported lazily: only the tests and the controller-side module need it
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    return x509, hashes, serialization, ec, ExtendedKeyUsageOID, NameOID


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _key_pem(key) -> bytes:  # type: ignore[no-untyped-def]
    _, _, serialization, _, _, _ = _x509()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def make_ca(common_name: str, days: int = CA_DAYS) -> Authority:
    x509, hashes, serialization, ec, _, NameOID = _x509()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return Authority(_key_pem(key), cert.public_bytes(serialization.Encoding.PEM))


def make_certificate(ca: Authority, *, common_name: str = "", organizational_unit: str = "",
                     dns: tuple[str, ...] = (), ips: tuple[str, ...] = (), server: bool = False,
                     client: bool = False, days: int = CERT_DAYS) -> tuple[bytes, bytes]:
    """(key PEM, certificate PEM) signed by ``ca``."""
    x509, hashes, serialization, ec, ExtendedKeyUsageOID, NameOID = _x509()
    if not server and not client:
        raise ValueError("a certificate must be for a server, a client or both")
    ca_key = serialization.load_pem_private_key(ca.key_pem, None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pgha")]
    if organizational_unit:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, organizational_unit))
    if common_name:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    now = _now()
    builder = (x509.CertificateBuilder().subject_name(x509.Name(attrs)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                            crl_sign=False, content_commitment=False, data_encipherment=False,
                                            key_agreement=False, encipher_only=False, decipher_only=False),
                              critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),
                              critical=False))
    names = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return _key_pem(key), cert.public_bytes(serialization.Encoding.PEM)


def ensure_ca(directory: str | Path, common_name: str) -> tuple[Authority, bool]:
    """The CA kept in ``directory`` (made when absent). Returns (authority, made now)."""
    d = Path(directory)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    key, crt = d / "ca.key", d / "ca.crt"
    if key.exists() and crt.exists():
        return Authority(key.read_bytes(), crt.read_bytes()), False
    ca = make_ca(common_name)
    _write(key, ca.key_pem, 0o600)
    _write(crt, ca.cert_pem, 0o644)
    return ca, True


def _wanted(cert_pem: bytes, ca: Authority, dns: tuple[str, ...], ips: tuple[str, ...], server: bool,
            client: bool, renew_days: int) -> bool:
    """Whether an existing certificate still fits: signed by ``ca``, same names and usage, not near expiry."""
    x509, _, _, _, ExtendedKeyUsageOID, _ = _x509()
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
        cert.verify_directly_issued_by(ca_cert)
    except Exception:  # noqa: BLE001 - unreadable, or not ours: make a new one
        return False
    if cert.not_valid_after_utc - _now() < datetime.timedelta(days=renew_days):
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        have_dns = tuple(sorted(san.get_values_for_type(x509.DNSName)))
        have_ips = tuple(sorted(str(i) for i in san.get_values_for_type(x509.IPAddress)))
    except x509.ExtensionNotFound:
        have_dns, have_ips = (), ()
    if have_dns != tuple(sorted(dns)) or have_ips != tuple(sorted(str(ipaddress.ip_address(i)) for i in ips)):
        return False
    eku = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    want = ({ExtendedKeyUsageOID.SERVER_AUTH} if server else set()) | ({ExtendedKeyUsageOID.CLIENT_AUTH} if client else set())
    return eku == want


def ensure_certificate(directory: str | Path, ca: Authority, name: str, *, common_name: str = "",
                       organizational_unit: str = "", dns: tuple[str, ...] = (), ips: tuple[str, ...] = (),
                       server: bool = False, client: bool = False, renew_days: int = RENEW_DAYS) -> tuple[Path, Path, bool]:
    """``<name>.key`` and ``<name>.crt`` in ``directory``, made when absent or no longer fitting.
    Returns (key path, certificate path, made now)."""
    d = Path(directory)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    key, crt = d / f"{name}.key", d / f"{name}.crt"
    if key.exists() and crt.exists() and _wanted(crt.read_bytes(), ca, dns, ips, server, client, renew_days):
        return key, crt, False
    key_pem, cert_pem = make_certificate(ca, common_name=common_name, organizational_unit=organizational_unit,
                                         dns=dns, ips=ips, server=server, client=client)
    _write(key, key_pem, 0o600)
    _write(crt, cert_pem, 0o644)
    return key, crt, True
