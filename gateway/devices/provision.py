"""A new device in one command: its broker login (a mosquitto password-file entry, or a client
certificate from the site CA), the ACL patterns that confine it to its own topics, and a bundle
folder to copy onto the device (agent.toml, the password, the trusted root.json, the CA).

The password is written only into files of mode 0600 (the bundle's and the broker's hashed
entry); it is never printed or logged.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from edgefleet import tomlconfig
from edgefleet.errors import UserError
from edgefleet.fsio import atomic_write_bytes
from protocol import broker_auth
from protocol.topics import DEVICE_ID_PATTERN, SITE_PATTERN

CERT_DAYS = 365


@dataclass(frozen=True)
class Request:
    device: str
    site: str
    broker_url: str
    repository: Path  # the operator's release repository (metadata/root.json)
    broker_dir: Path  # the site broker's passwd and acl files
    out: Path
    topic_root: str = "edgefleet"
    ca_cert: Path | None = None
    ca_key: Path | None = None  # with it: a client certificate instead of a password
    state_dir: str = "/var/lib/edgefleet-agent"
    model: str = "/var/lib/edgefleet-agent/model.tflite"


def provision(req: Request) -> dict:
    """Write the broker's entries and the bundle; what was written (no secret)."""
    _check(req)
    root = req.repository / "metadata" / "root.json"
    if not root.is_file():
        raise UserError(f"{req.repository}: no metadata/root.json (not a release repository)")
    use_cert = req.ca_key is not None
    passwd, acl = req.broker_dir / "passwd", req.broker_dir / "acl"
    if _has_user(passwd, req.device):
        raise UserError(f"device {req.device} is already in {passwd}")
    req.out.mkdir(parents=True, mode=0o700)
    mqtt: dict = {"url": req.broker_url, "username": req.device}
    if req.ca_cert is not None:
        shutil.copyfile(req.ca_cert, req.out / "ca.pem")
        mqtt["ca_file"] = "ca.pem"
    if use_cert:
        cert, key = _issue(req.device, req.ca_cert, req.ca_key)
        atomic_write_bytes(req.out / "client.crt", cert, mode=0o644)
        atomic_write_bytes(req.out / "client.key", key, mode=0o600)
        mqtt |= {"cert_file": "client.crt", "key_file": "client.key"}
    else:
        password = broker_auth.new_password()
        atomic_write_bytes(req.out / "mqtt-password", password.encode() + b"\n", mode=0o600)
        mqtt["password_file"] = "mqtt-password"
    shutil.copyfile(root, req.out / "root.json")
    tables = {
        "device": {"id": req.device, "site": req.site},
        "mqtt": mqtt,
        "state": {"dir": req.state_dir},
        "model": {"path": req.model},
        "update": {"trusted_root": "root.json"},
    }
    atomic_write_bytes(req.out / "agent.toml", tomlconfig.dumps(tables).encode(), mode=0o600)

    req.broker_dir.mkdir(parents=True, exist_ok=True)
    if not use_cert:
        _add_password(passwd, req.device, password)
    _ensure_acl(acl, req.topic_root)
    return {
        "device": req.device,
        "bundle": str(req.out),
        "files": sorted(p.name for p in req.out.iterdir()),
        "login": "certificate" if use_cert else "password",
        "password_file": None if use_cert else str(passwd),
        "acl_file": str(acl),
        "next": "reload the broker (systemctl reload mosquitto), then copy the bundle to "
        "the device's /etc/edgefleet/",
    }


def _check(req: Request) -> None:
    if not DEVICE_ID_PATTERN.fullmatch(req.device):
        raise UserError(f"device id {req.device!r}: must match [A-Za-z0-9_-]{{1,64}}")
    if not SITE_PATTERN.fullmatch(req.site):
        raise UserError(f"site {req.site!r}: must match [A-Za-z0-9_-]{{1,64}}")
    parts = urlsplit(req.broker_url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or parts.username:
        raise UserError(f"broker URL {req.broker_url!r}: must be mqtt[s]://host[:port]")
    if parts.scheme == "mqtt" and not _loopback(parts.hostname):
        raise UserError(f"broker URL {req.broker_url!r}: plain MQTT only on loopback; use mqtts://")
    if req.ca_key is not None and (req.ca_cert is None or parts.scheme != "mqtts"):
        raise UserError("a client certificate needs --ca-cert and an mqtts:// broker URL")
    if req.out.exists():
        raise UserError(f"{req.out}: already exists; a bundle is written to a new folder")


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _has_user(passwd: Path, user: str) -> bool:
    if not passwd.exists():
        return False
    return any(line.split(":", 1)[0] == user for line in passwd.read_text().splitlines())


def _password_line(user: str, password: str) -> str:
    """``mosquitto_passwd``'s entry when it is installed, the same format from hashlib if not."""
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        return broker_auth.password_line(user, password)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "passwd"
        path.touch(mode=0o600)
        result = subprocess.run([tool, "-b", str(path), user, password], capture_output=True)
        if result.returncode != 0:
            raise UserError(f"mosquitto_passwd failed: {result.stderr.decode().strip()}")
        return path.read_text().strip()


def _add_password(passwd: Path, user: str, password: str) -> None:
    old = passwd.read_bytes() if passwd.exists() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    atomic_write_bytes(passwd, old + _password_line(user, password).encode() + b"\n", mode=0o600)


def _ensure_acl(acl: Path, topic_root: str) -> None:
    """The device patterns (on %u) once; site users' entries are the operator's."""
    old = acl.read_text() if acl.exists() else ""
    wanted = broker_auth.device_acl(topic_root)
    present = set(old.splitlines())
    if all(line in present for line in wanted[1:]):
        return
    text = "\n".join(wanted) + "\n" + ("\n" + old if old else "")
    atomic_write_bytes(acl, text.encode(), mode=0o600)


def _issue(device: str, ca_cert: Path, ca_key: Path) -> tuple[bytes, bytes]:
    """A client certificate whose common name is the device id (the broker's user name)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    try:
        issuer = x509.load_pem_x509_certificate(ca_cert.read_bytes())
        signer = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"cannot use the site CA {ca_cert} / {ca_key}: {exc}") from None
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device)]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(signer, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem
