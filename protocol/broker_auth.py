"""Who may use which MQTT topics, as the site broker (mosquitto 2) is told: the ACL, the
password-file entries, and the names the gateway logs in with.

A device is the identity it authenticated as: the broker replaces every client id with the
user name (``use_username_as_clientid``; with client certificates the certificate's common
name is the user name), and the ACL patterns are on ``%u``. So a device can neither write
another device's topics, read another device's commands, nor take over another client's
session by sending its client id. Site users (the gateway, monitors) may use the whole topic
root; each of their connections is its own user, since one user name is one session.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets

DEVICE_WRITE_TOPICS = ("telemetry", "samples", "status", "events")
DEVICE_READ_TOPICS = ("cmd",)
USER_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,128}")
PBKDF2_ITERATIONS = 101  # what mosquitto_passwd 2.0 writes
SALT_BYTES = 12


def command_user(user: str) -> str:
    """The gateway's command connection: its own session, so its own user name."""
    return f"{user}-cmd"


def device_acl(topic_root: str) -> list[str]:
    """Patterns that let each device user (= device id) write and read only its own topics."""
    lines = ["# devices: only their own topics (user name = client id = device id)"]
    lines += [f"pattern write {topic_root}/+/dev/%u/{name}" for name in DEVICE_WRITE_TOPICS]
    lines += [f"pattern read {topic_root}/+/dev/%u/{name}" for name in DEVICE_READ_TOPICS]
    return lines


def site_acl(user: str, topic_root: str) -> list[str]:
    return ["", f"user {user}", f"topic readwrite {topic_root}/#"]


def acl_text(topic_root: str, site_users: list[str] | tuple[str, ...]) -> str:
    lines = device_acl(topic_root)
    for user in sorted(site_users):
        lines += site_acl(user, topic_root)
    return "\n".join(lines) + "\n"


def new_password() -> str:
    return secrets.token_urlsafe(24)


def password_line(user: str, password: str, salt: bytes | None = None) -> str:
    """A mosquitto 2 password-file line (``$7$``: PBKDF2-SHA512, as ``mosquitto_passwd``)."""
    if not USER_PATTERN.fullmatch(user):
        raise ValueError(f"bad user name {user!r}: must match {USER_PATTERN.pattern}")
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    b64 = base64.b64encode
    return f"{user}:$7${PBKDF2_ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"
