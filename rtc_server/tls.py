"""HTTPS for the server: a certificate the user gives (--tls-cert, --tls-key), or one made here
for this machine's names and LAN addresses (--tls self-signed), so that a phone on the same
network may use its microphone (browsers give getUserMedia to secure pages only).

A self-signed certificate is kept in the cache folder and reused while it covers the same
addresses; its SPKI pin (the base64 SHA-256 of its public key) is logged, for browsers and tools
that trust a certificate by its key (Chromium: --ignore-certificate-errors-spki-list=PIN).
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import logging
import socket
import ssl
from pathlib import Path

log = logging.getLogger(__name__)


def lan_addresses() -> list[str]:
    """Loopback, and the addresses this machine reaches other hosts from (no packet is sent)."""
    found = {"127.0.0.1"}
    for target in ("192.0.2.1", "10.255.255.255"):  # documentation / private ranges: only routing is asked
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.connect((target, 9))
                found.add(probe.getsockname()[0])
        except OSError:
            pass
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            found.add(info[4][0])
    except OSError:
        pass
    return sorted(found)


def spki_pin(cert_pem: bytes) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of a PEM certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(cert_pem)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def self_signed(folder: Path, addresses: list[str], names: list[str]) -> tuple[Path, Path]:
    """(cert, key) PEM files for `addresses` and DNS `names`, made once and reused while they match."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    tag = hashlib.sha256(",".join(sorted(addresses) + sorted(names)).encode()).hexdigest()[:12]
    cert_path, key_path = folder / f"self-signed-{tag}.crt", folder / f"self-signed-{tag}.key"
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if cert.not_valid_after_utc > datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=7):
            return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "avatar server (self-signed)")])
    now = datetime.datetime.now(datetime.timezone.utc)
    alt = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_path.touch(mode=0o600)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    return context


def tls_context(config, cache: Path) -> ssl.SSLContext | None:
    """The server's TLS context from its settings, or None for plain HTTP. SystemExit names the fix."""
    if config.tls_cert or config.tls_key:
        if not (config.tls_cert and config.tls_key):
            raise SystemExit("--tls-cert and --tls-key go together (the certificate chain and its private key)")
        try:
            return server_context(config.tls_cert, config.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise SystemExit(f"cannot use --tls-cert/--tls-key: {exc}") from None
    if config.tls == "off":
        return None
    addresses = lan_addresses()
    if config.host not in ("0.0.0.0", "::", "") and config.host not in addresses:
        try:
            ipaddress.ip_address(config.host)
            addresses.append(config.host)
        except ValueError:
            pass
    names = sorted({"localhost", socket.gethostname()})
    cert, key = self_signed(cache / "tls", addresses, names)
    log.info("HTTPS with a self-signed certificate for %s (%s); its SPKI pin: %s", ", ".join(addresses),
             cert, spki_pin(cert.read_bytes()))
    return server_context(cert, key)
