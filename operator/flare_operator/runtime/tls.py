"""A self-signed CA and serving certificate for the site's admission webhook (cryptography).

Rotation: the gateway makes both at every start, valid ``validity`` (a year by default), and its
liveness probe fails once less than a third of that is left (``renewal_due``): the kubelet restarts
the container, which makes new ones and writes the new CA into the webhook configurations. No
cert-manager, and the key nowhere but in the operator's own work folder (in a Pod, its emptyDir)."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

DEFAULT_VALIDITY = datetime.timedelta(days=365)


def write_webhook_certs(folder: Path, host: str, *more_names: str,
                        validity: datetime.timedelta = DEFAULT_VALIDITY) -> tuple[Path, Path, Path]:
    """(ca.crt, tls.crt, tls.key) in `folder`, the serving cert valid for `host` (name or IP) and
    `more_names` (DNS names, e.g. a Service's), for `validity` from now."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flare-operator webhook CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + validity)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for name in (host, *more_names):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + validity)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = folder / "ca.crt", folder / "tls.crt", folder / "tls.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[2].chmod(0o600)
    return paths


def validity_of(cert: Path) -> tuple[datetime.datetime, datetime.datetime]:
    """(not before, not after) of a PEM certificate, in UTC."""
    from cryptography import x509

    c = x509.load_pem_x509_certificate(cert.read_bytes())
    return c.not_valid_before_utc, c.not_valid_after_utc


def renewal_due(not_before: datetime.datetime, not_after: datetime.datetime, now: datetime.datetime) -> bool:
    """Less than a third of the certificate's lifetime left (a year's: about four months)."""
    return not_after - now < (not_after - not_before) / 3
