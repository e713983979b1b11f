"""TLS material of the secure local broker: a CA of its own and a server certificate for
127.0.0.1 and localhost, made with ``cryptography``.

The clients get the CA as PEM (``ca.pem``: librdkafka's ``ssl.ca.location``, Python's
``ssl``); the broker gets its key and certificate as a PKCS#12 keystore, the format every
JVM since 11 reads without further flags.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 825  # the longest validity the common TLS clients accept for a server cert


@dataclass(frozen=True)
class BrokerTls:
    ca_pem: Path
    keystore: Path  # PKCS#12: the server's key and certificate chain
    keystore_password: str
    # The same key and certificate chain as PEM, for servers that read PEM (the registry's
    # TLS proxy); the key file is readable by this user alone.
    cert_pem: Path
    key_pem: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` readable by this user alone."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def ensure_broker_tls(directory: Path) -> BrokerTls:
    """The CA and the server keystore under ``directory``, made on the first call and
    reused after (clients keep trusting the same CA across restarts)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_pem, keystore, pw_file = directory / "ca.pem", directory / "broker.p12", directory / ".p12"
    cert_pem, key_pem = directory / "server.pem", directory / "server.key"
    if all(f.exists() for f in (ca_pem, keystore, pw_file, cert_pem, key_pem)):
        return BrokerTls(ca_pem, keystore, pw_file.read_text(), cert_pem, key_pem)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("streamproc local CA"))
        .issuer_name(_name("streamproc local CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    password = secrets.token_urlsafe(24)
    p12 = pkcs12.serialize_key_and_certificates(
        b"broker", key, cert, [ca_cert], serialization.BestAvailableEncryption(password.encode())
    )
    _write_private(keystore, p12)
    _write_private(pw_file, password.encode())
    key_bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())  # fmt: skip
    _write_private(key_pem, key_bytes)
    chain = cert.public_bytes(serialization.Encoding.PEM)
    cert_pem.write_bytes(chain + ca_cert.public_bytes(serialization.Encoding.PEM))
    # The CA's key is not kept: nothing else is ever signed with it.
    ca_pem.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return BrokerTls(ca_pem, keystore, password, cert_pem, key_pem)
