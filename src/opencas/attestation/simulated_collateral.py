"""Simulated collateral: a signed list of simulated machines and their TCB status.

For development and tests, as simulated evidence is. It plays the part Intel's TCB info plays
for DCAP: a root the verifier is configured to trust (:class:`SimulatedVerifier` with
``roots``) says, for a validity window and under a TCB evaluation number, which simulated
machines are up to date, out of date or revoked. So a TCB recovery, or a machine revoked after
the fact, can be exercised end to end — and a recorded decision replayed against newer
collateral (``casctl audit replay``).

The document is the canonical JSON (RFC 8785) of::

    {"body": {"format": "opencas-simulated-collateral/v1",
              "root_key": <standard base64 of the raw 32-byte Ed25519 public key>,
              "issue_date": <RFC 3339 UTC>, "next_update": <RFC 3339 UTC>,
              "tcb_evaluation_number": <integer >= 0>,
              "machines": {<machine id: the platform key hash>: <TCB status>, ...}},
     "signature": <standard base64 of the 64-byte Ed25519 signature>}

and the signature covers ``b"opencas-simulated-collateral/v1\\x00" + canonical_json(body)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from opencas.attestation.verifier import CollateralKey
from opencas.crypto.canonical import canonical_json, member_mismatch, strict_json_object
from opencas.crypto.encoding import b64_decode, b64_encode
from opencas.crypto.keys import key_hash
from opencas.errors import EvidenceError

FORMAT = "opencas-simulated-collateral/v1"
#: The one collateral document simulated evidence is checked against.
SIMULATED_COLLATERAL_KEY = CollateralKey.of("simulated")
#: The statuses a simulated machine can have: Intel's names, so sessions tolerate them alike.
TCB_STATUSES = frozenset(
    {
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
        "Revoked",
    }
)
MAX_MACHINES = 10_000

_SIGNING_PREFIX = FORMAT.encode("ascii") + b"\x00"
_BODY_KEYS = frozenset(
    {"format", "root_key", "issue_date", "next_update", "tcb_evaluation_number", "machines"}
)
_TOP_KEYS = frozenset({"body", "signature"})
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_MACHINE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class SimulatedCollateral:
    """A checked simulated collateral document: who signed it, when it holds, what it says."""

    root_key_hash: str
    not_before: datetime
    not_after: datetime
    tcb_evaluation_number: int
    machines: Mapping[str, str]


def _time_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def create_simulated_collateral(
    root: Ed25519PrivateKey,
    *,
    issue_date: datetime,
    next_update: datetime,
    tcb_evaluation_number: int,
    machines: Mapping[str, str],
) -> bytes:
    """A simulated collateral document signed by ``root`` (see the module docstring).

    Raises ``ValueError`` for a machine id that is not a key hash or an unknown status.
    """
    for machine, status in machines.items():
        if not _MACHINE.fullmatch(machine) or status not in TCB_STATUSES:
            raise ValueError(f"machine {machine!r} with status {status!r} cannot be listed")
    body: dict[str, Any] = {
        "format": FORMAT,
        "root_key": b64_encode(root.public_key().public_bytes_raw()),
        "issue_date": _time_text(issue_date),
        "next_update": _time_text(next_update),
        "tcb_evaluation_number": tcb_evaluation_number,
        "machines": dict(machines),
    }
    signature = root.sign(_SIGNING_PREFIX + canonical_json(body))
    return canonical_json({"body": body, "signature": b64_encode(signature)})


def _error(problem: str) -> EvidenceError:
    return EvidenceError(f"the simulated collateral {problem}", check="collateral")


def _members(value: object, expected: frozenset[str], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _error(f"{where} must be a JSON object")
    mismatch = member_mismatch(value, expected)
    if mismatch is not None:
        raise _error(f"{where} has the wrong members ({mismatch})")
    return value


def _time(body: Mapping[str, Any], name: str) -> datetime:
    value = body[name]
    if not isinstance(value, str) or not _TIME.fullmatch(value):
        raise _error(f"member '{name}' must be RFC 3339 UTC to the second")
    return datetime.fromisoformat(value)


def parse_simulated_collateral(data: bytes, roots: frozenset[str]) -> SimulatedCollateral:
    """Check ``data`` as simulated collateral signed by one of ``roots`` (key hashes).

    Raises :class:`EvidenceError` with ``check="collateral"`` saying what is wrong: its form,
    a root that is not trusted, a signature that does not verify.
    """
    try:
        document = strict_json_object(data, "simulated collateral")
        canonical = canonical_json(document) == data
    except ValueError as exc:
        raise _error(f"is not JSON: {exc}") from exc
    if not canonical:
        raise _error("is not in canonical JSON form (RFC 8785)")
    top = _members(document, _TOP_KEYS, "document")
    body = _members(top["body"], _BODY_KEYS, "body")
    if body["format"] != FORMAT:
        raise _error(f"member 'format' must be '{FORMAT}'")
    try:
        root = Ed25519PublicKey.from_public_bytes(b64_decode(str(body["root_key"])))
        signature = b64_decode(str(top["signature"]))
    except ValueError as exc:
        raise _error("has a root key or signature that is not base64 of its size") from exc
    root_hash = key_hash(root)
    if root_hash not in roots:
        raise _error(f"is signed by the root {root_hash}, which this verifier does not trust")
    try:
        root.verify(signature, _SIGNING_PREFIX + canonical_json(body))
    except InvalidSignature as exc:
        raise _error("signature does not verify under its root key") from exc
    number = body["tcb_evaluation_number"]
    if type(number) is not int or number < 0:
        raise _error("member 'tcb_evaluation_number' must be an integer >= 0")
    machines = body["machines"]
    if not isinstance(machines, dict) or len(machines) > MAX_MACHINES:
        raise _error(f"member 'machines' must be an object of at most {MAX_MACHINES} machines")
    for machine, status in machines.items():
        if not _MACHINE.fullmatch(machine) or status not in TCB_STATUSES:
            raise _error(f"lists machine {machine[:64]!r} with a status that is not a TCB status")
    return SimulatedCollateral(
        root_key_hash=root_hash,
        not_before=_time(body, "issue_date"),
        not_after=_time(body, "next_update"),
        tcb_evaluation_number=number,
        machines=MappingProxyType(dict(machines)),
    )


def tcb_status_of(collateral: SimulatedCollateral, machine: str, at: datetime) -> str:
    """The TCB status ``collateral`` gives ``machine`` at ``at``.

    Raises :class:`EvidenceError`: ``check="collateral"`` when it is not valid at ``at``,
    ``check="tcb"`` when it does not list the machine (as no TCB level of Intel's matches).
    """
    if not collateral.not_before <= at <= collateral.not_after:
        raise _error(
            f"is valid from {_time_text(collateral.not_before)} to "
            f"{_time_text(collateral.not_after)}, not at {_time_text(at)}"
        )
    status = collateral.machines.get(machine)
    if status is None:
        raise EvidenceError(
            f"the simulated collateral lists no TCB status for the machine {machine}",
            check="tcb",
        )
    return status
