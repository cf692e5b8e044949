"""The local broker's secrets, as Mosquitto reads them: accounts, ACL and TLS certificates.

Two accounts: the demo token (username and password both, as on the platform), which may only
read `device/+/telemetry/#`, and the publisher the simulated devices use, which may write
`device/#`. They go either into the dynamic-security plugin's `dynsec.json` (which refuses a
subscription outside the ACL, as the platform does) or into a password file and an ACL file.
Passwords are stored as Mosquitto 2.0 hashes them. Every secret file is written mode 0600.

The certificates come from `trustme` (built on `cryptography`), in this process: the CA's
private key lives only in memory, signs the server certificate once and is gone.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import secrets
import string
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import trustme

__all__ = [
    "ACL_FILE",
    "DEMO_TOKEN_PREFIX",
    "DYNSEC_FILE",
    "PASSWORD_FILE",
    "PUBLISHER_USERNAME",
    "SERVER_CERT_FILE",
    "SERVER_KEY_FILE",
    "TELEMETRY_FILTER",
    "make_certificates",
    "new_token",
    "write_accounts",
    "write_private",
]

DEMO_TOKEN_PREFIX = "tesa_mqtt_demo_"
PUBLISHER_USERNAME = "publisher"
#: What the demo token may read, as a platform token.
TELEMETRY_FILTER = "device/+/telemetry/#"

# The files in the broker's folder that hold secrets (the config names them too).
DYNSEC_FILE = "dynsec.json"
PASSWORD_FILE = "passwd"
ACL_FILE = "acl"
SERVER_CERT_FILE = "server.pem"
SERVER_KEY_FILE = "server.key"

_TOKEN_ALPHABET = string.ascii_letters + string.digits
# mosquitto_passwd 2.0's defaults, which the dynsec plugin shares: PBKDF2-SHA512,
# 101 iterations, a 12-byte salt.
_PBKDF2_ITERATIONS = 101
_SALT_BYTES = 12
_CERT_DAYS = 3  # the server certificate's validity; the CA's key is gone anyway
_CERT_ORGANIZATION = "tesaiot-data local broker"


def new_token() -> str:
    """A new random demo token: `tesa_mqtt_demo_` and 32 letters or digits."""
    return DEMO_TOKEN_PREFIX + "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(32))


def write_private(path: Path, data: str | bytes) -> None:
    """Write a file that only its owner may read (mode 0600, also when it was there before).

    Raises:
        OSError: The file could not be written.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data.encode() if isinstance(data, str) else data)
    path.chmod(0o600)  # a file that was there before keeps its mode through os.open


def write_accounts(
    workdir: Path,
    *,
    token: str,
    publisher_password: str,
    token_revoked: bool,
    dynsec: bool,
) -> None:
    """Write the accounts and their ACL: `dynsec.json`, or `passwd` and `acl`.

    Args:
        workdir: The broker's folder.
        token: The demo token (username and password).
        publisher_password: The publisher account's password.
        token_revoked: Leave the token's account out (every connect with it is refused).
        dynsec: Write the dynamic-security plugin's file instead of a password and an ACL file.

    Raises:
        OSError: A file could not be written.
    """
    if dynsec:
        document = _dynsec_document(
            token=None if token_revoked else token, publisher_password=publisher_password
        )
        write_private(workdir / DYNSEC_FILE, json.dumps(document, indent=1))
        return
    token_line = "" if token_revoked else _password_line(token, token)
    write_private(
        workdir / PASSWORD_FILE,
        token_line + _password_line(PUBLISHER_USERNAME, publisher_password),
    )
    write_private(
        workdir / ACL_FILE,
        f"user {token}\ntopic read {TELEMETRY_FILTER}\n\n"
        f"user {PUBLISHER_USERNAME}\ntopic readwrite device/#\n",
    )


def make_certificates(workdir: Path, ca_file: Path, *, hosts: Iterable[str]) -> None:
    """Make a CA and a server certificate; write the CA's certificate and the server's pair.

    The CA's key exists only inside this function: it signs the server certificate once and
    is dropped with it, so neither a crash nor a kill -9 can leave it behind on disk.

    Args:
        workdir: Where `server.pem` and `server.key` (mode 0600) go.
        ca_file: Where the CA certificate goes (clients verify the broker with it).
        hosts: The names and addresses the server certificate is valid for.

    Raises:
        OSError: A file could not be written.
    """
    ca = trustme.CA(organization_name=_CERT_ORGANIZATION, organization_unit_name="local CA")
    server = ca.issue_cert(
        *dict.fromkeys(hosts),
        common_name="localhost",
        organization_name=_CERT_ORGANIZATION,
        organization_unit_name="local broker",
        not_after=datetime.datetime.now(datetime.timezone.utc)
        + datetime.timedelta(days=_CERT_DAYS),
    )
    ca_file.write_bytes(ca.cert_pem.bytes())
    (workdir / SERVER_CERT_FILE).write_bytes(server.cert_chain_pems[0].bytes())
    write_private(workdir / SERVER_KEY_FILE, server.private_key_pem.bytes())


def _password_line(username: str, password: str) -> str:
    salt, digest = _pbkdf2(password)
    return f"{username}:$7${_PBKDF2_ITERATIONS}${salt}${digest}\n"


def _pbkdf2(password: str) -> tuple[str, str]:
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _PBKDF2_ITERATIONS)
    return base64.b64encode(salt).decode(), base64.b64encode(digest).decode()


def _dynsec_client(username: str, password: str, role: str) -> dict[str, Any]:
    salt, digest = _pbkdf2(password)
    return {
        "username": username,
        "password": digest,
        "salt": salt,
        "iterations": _PBKDF2_ITERATIONS,
        "roles": [{"rolename": role}],
    }


def _dynsec_document(*, token: str | None, publisher_password: str) -> dict[str, Any]:
    def allow(acltype: str, topic: str) -> dict[str, Any]:
        return {"acltype": acltype, "topic": topic, "allow": True}

    document: dict[str, Any] = {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": [
            _dynsec_client(PUBLISHER_USERNAME, publisher_password, "telemetry-writer"),
        ],
        "groups": [],
        "roles": [
            {
                "rolename": "telemetry-reader",
                "acls": [
                    allow("subscribePattern", TELEMETRY_FILTER),
                    # Mosquitto 2.0 checks a shared subscription's filter with its
                    # $share/<group>/ prefix; EMQX checks the filter without it.
                    allow("subscribePattern", f"$share/+/{TELEMETRY_FILTER}"),
                    allow("publishClientReceive", TELEMETRY_FILTER),
                ],
            },
            {
                "rolename": "telemetry-writer",
                "acls": [
                    allow("subscribePattern", "device/#"),
                    allow("publishClientReceive", "device/#"),
                    allow("publishClientSend", "device/#"),
                ],
            },
        ],
    }
    if token is not None:
        document["clients"].append(_dynsec_client(token, token, "telemetry-reader"))
    return document
