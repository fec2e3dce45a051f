"""The workload side of the enclave API: ask for a nonce, attest, open the sealed configuration.

A workload never talks to a CAS it has not pinned: :class:`EnclaveClient` requires the CA
certificate of a CAS that casctl attested, and TLS verifies against exactly that. What the CAS
answers is opened with the workload's private key (:mod:`opencas.crypto.hpke_seal`) and parsed
strictly into a :class:`WorkloadConfig`; the plaintext is never logged or put into messages.

A client keeps the nonce the CAS hands out with a successful answer (``CAS-Next-Nonce``) for
the next attestation through it, while enough of its lifetime is left
(:meth:`EnclaveClient.take_next_nonce`).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import httpx

from opencas.attestation.evidence import Evidence
from opencas.attestation.workload_binding import NEXT_NONCE_HEADER, ConfigId
from opencas.client.channel import (
    DEFAULT_TIMEOUT,
    ApiChannel,
    ApiError,
    AsyncListenerClient,
)
from opencas.crypto.canonical import canonical_json, member_mismatch, strict_json_object
from opencas.crypto.encoding import b64_decode
from opencas.crypto.hpke_seal import (
    RecipientPrivateKey,
    SealedConfig,
    SealedConfigError,
    open_workload_config,
)
from opencas.crypto.volume_format import report_proof
from opencas.errors import AttestationRefused, CasError, ClientError
from opencas.policy.model import (
    check_absolute_path,
    check_environment_name,
    check_fspf_key,
    check_fspf_tag,
    check_hex64,
    check_no_nul,
    check_permission,
    check_secret_name,
    check_volume_name,
)

_NONCE_SHAPE = re.compile(r"[0-9a-f]{64}")
#: A nonce's lifetime when the CAS did not say (the documented 60 s).
DEFAULT_NONCE_LIFETIME = 60.0
#: A next nonce is used only while this many of its seconds are left: the evidence must be made
#: and posted before it expires at the CAS, whose clock started before the answer travelled.
NEXT_NONCE_MARGIN = 10.0
_CONFIG_KEYS = frozenset(
    {
        "config_id",
        "session_hash",
        "command",
        "environment",
        "pwd",
        "injection_files",
        "certificates",
        "volumes",
    }
)
_VOLUME_KEYS = frozenset({"name", "path", "key", "tag", "ticket", "report_secret"})
_HEX64 = re.compile(r"[0-9a-f]{64}")
_TICKET = re.compile(r"[A-Za-z0-9_-]{1,4096}")
_FILE_KEYS = frozenset({"path", "content", "permission"})
_FSPF_KEYS = frozenset({"path", "key", "tag"})
_FSPF_KEYS_MEMBER = frozenset({"fspf"})
_CERTIFICATE_KEYS = frozenset({"certificate", "chain"})
_UNREADABLE = "the CAS's answer could not be opened/parsed"


@dataclass(frozen=True)
class InjectionFile:
    """A file the CAS hands the workload: its session ``path``, ``content`` and ``permission``.

    ``permission`` is the session's spelling (``"0600"``) or None for the default.
    """

    path: str
    content: bytes = field(repr=False)
    permission: str | None


@dataclass(frozen=True)
class ProtectionFile:
    """The service's protection file (``fspf_path``) and the key and tag that open it."""

    path: str
    key: str = field(repr=False)
    tag: str


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate the CAS issued to the workload's key, and its chain up to the issuer CA."""

    certificate: str
    chain: str


@dataclass(frozen=True)
class VolumeGrant:
    """A volume the CAS hands the workload: its ``name``, the session ``path`` it is mapped at,
    its ``key`` and current ``tag`` (None: empty), and the ``ticket`` and ``report_secret``
    that prove the workload's report of a new tag."""

    name: str
    path: str
    key: bytes = field(repr=False)
    tag: str | None
    ticket: str = field(repr=False)
    report_secret: bytes = field(repr=False)


@dataclass(frozen=True)
class WorkloadConfig:
    """What the CAS sends an attested workload, checked field by field.

    ``command`` is the session's whole argv (empty: the user's arguments apply), ``environment``
    the session's variables, ``pwd`` an absolute path or None, ``injection_files`` the files to
    write (unique absolute paths), ``certificates`` the per-workload certificates by secret name.
    Values may hold secrets: the representation shows only the config id and the session hash.
    """

    config_id: ConfigId
    session_hash: str
    command: tuple[str, ...] = field(repr=False)
    environment: Mapping[str, str] = field(repr=False)
    pwd: str | None = field(repr=False)
    injection_files: tuple[InjectionFile, ...] = field(repr=False)
    certificates: Mapping[str, IssuedCertificate] = field(repr=False)
    fspf: ProtectionFile | None = None
    volumes: tuple[VolumeGrant, ...] = field(default=(), repr=False)


def open_config(
    private_key: RecipientPrivateKey, sealed_b64: str, config_id: ConfigId, nonce: str
) -> WorkloadConfig:
    """Open the CAS's sealed answer for ``(config_id, nonce)`` and parse it strictly.

    The plaintext must be the canonical JSON of exactly the documented members, with the
    expected ``config_id``. Any deviation (wrong key, tampered bytes, another exchange, a
    missing or extra member, a wrong type, a path that is not absolute, a duplicate path, an
    invalid permission or name) raises :class:`ClientError` saying the CAS's answer could not
    be opened or parsed, and why, without quoting the plaintext.
    """
    try:
        plaintext = open_workload_config(private_key, sealed_b64, str(config_id), nonce)
    except SealedConfigError as exc:
        raise ClientError(f"{_UNREADABLE}: {exc}") from exc
    try:
        return parse_workload_config(plaintext, config_id)
    except ValueError as exc:
        raise ClientError(f"{_UNREADABLE}: {exc}") from exc


def parse_workload_config(plaintext: bytes, config_id: ConfigId) -> WorkloadConfig:
    """Parse an opened configuration for ``config_id``; ``ValueError`` says what is wrong.

    Messages name members and positions, never values, since values may be secrets.
    """
    try:
        document = strict_json_object(plaintext, "configuration")
        canonical = canonical_json(document) == plaintext
    except ValueError:
        raise ValueError("the configuration is not a JSON object") from None
    if not canonical:
        raise ValueError("the configuration is not in canonical JSON form (RFC 8785)")
    # ``fspf`` is there only for a service with a protection file.
    _exact_keys(document, _CONFIG_KEYS | (_FSPF_KEYS_MEMBER & document.keys()), "the configuration")
    if document["config_id"] != str(config_id):
        raise ValueError("the configuration is for another config id")
    session_hash = _checked(document["session_hash"], check_hex64, "session_hash")
    command = tuple(
        _checked(item, check_no_nul, f"command[{index}]")
        for index, item in enumerate(_list(document["command"], "command"))
    )
    environment = _environment(document["environment"])
    pwd = document["pwd"]
    if pwd is not None:
        pwd = _checked(pwd, check_absolute_path, "pwd")
    return WorkloadConfig(
        config_id=config_id,
        session_hash=session_hash,
        command=command,
        environment=MappingProxyType(environment),
        pwd=pwd,
        injection_files=_injection_files(document["injection_files"]),
        certificates=MappingProxyType(_certificates(document["certificates"])),
        fspf=_protection_file(document["fspf"]) if "fspf" in document else None,
        volumes=_volumes(document["volumes"]),
    )


def _protection_file(value: object) -> ProtectionFile:
    entry = _exact_keys(value, _FSPF_KEYS, "fspf")
    return ProtectionFile(
        path=_checked(entry["path"], check_absolute_path, "fspf.path"),
        key=_checked(entry["key"], check_fspf_key, "fspf.key"),
        tag=_checked(entry["tag"], check_fspf_tag, "fspf.tag"),
    )


def _volumes(value: object) -> tuple[VolumeGrant, ...]:
    grants: list[VolumeGrant] = []
    for index, item in enumerate(_list(value, "volumes")):
        where = f"volumes[{index}]"
        entry = _exact_keys(item, _VOLUME_KEYS, where)
        name = _checked(entry["name"], check_volume_name, f"{where}.name")
        path = _checked(entry["path"], check_absolute_path, f"{where}.path")
        tag = entry["tag"]
        if tag is not None:
            tag = _checked(tag, check_hex64, f"{where}.tag")
        key, secret = (
            _checked(entry[member], check_hex64, f"{where}.{member}")
            for member in ("key", "report_secret")
        )
        ticket = entry["ticket"]
        if not isinstance(ticket, str) or not _TICKET.fullmatch(ticket):
            raise ValueError(f"{where}.ticket is not valid")
        if any(grant.name == name or grant.path == path for grant in grants):
            raise ValueError(f"{where} repeats an earlier volume's name or path")
        grants.append(
            VolumeGrant(name, path, bytes.fromhex(key), tag, ticket, bytes.fromhex(secret))
        )
    return tuple(grants)


def _exact_keys(value: object, expected: frozenset[str], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a JSON object")
    # Member names of the configuration can be secret values: unexpected ones are only counted.
    mismatch = member_mismatch(value, expected, name_unexpected=False)
    if mismatch is not None:
        raise ValueError(f"{where} has the wrong members ({mismatch})")
    return value


def _list(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{where} must be a JSON array")
    return value


def _checked(value: object, check: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string")
    try:
        result: str = check(value)
    except ValueError:
        raise ValueError(f"{where} is not valid") from None
    return result


def _environment(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError("environment must be a JSON object")
    environment: dict[str, str] = {}
    for index, (name, text) in enumerate(value.items()):
        checked_name = _checked(name, check_environment_name, f"environment name #{index + 1}")
        environment[checked_name] = _checked(text, check_no_nul, f"environment[{checked_name}]")
    return environment


def _injection_files(value: object) -> tuple[InjectionFile, ...]:
    files: list[InjectionFile] = []
    seen: set[str] = set()
    for index, item in enumerate(_list(value, "injection_files")):
        where = f"injection_files[{index}]"
        entry = _exact_keys(item, _FILE_KEYS, where)
        path = _checked(entry["path"], check_absolute_path, f"{where}.path")
        if path == "/":
            raise ValueError(f"{where}.path must name a file, not /")
        if path in seen:
            raise ValueError(f"{where}.path repeats an earlier injection file")
        seen.add(path)
        content = entry["content"]
        if not isinstance(content, str):
            raise ValueError(f"{where}.content must be a base64 string")
        try:
            data = b64_decode(content)
        except ValueError:
            raise ValueError(f"{where}.content is not valid base64") from None
        permission = entry["permission"]
        if permission is not None:
            permission = _checked(permission, check_permission, f"{where}.permission")
        files.append(InjectionFile(path, data, permission))
    return tuple(files)


def _certificates(value: object) -> dict[str, IssuedCertificate]:
    if not isinstance(value, dict):
        raise ValueError("certificates must be a JSON object")
    certificates: dict[str, IssuedCertificate] = {}
    for index, (name, item) in enumerate(value.items()):
        checked_name = _checked(name, check_secret_name, f"certificate name #{index + 1}")
        where = f"certificates[{checked_name}]"
        entry = _exact_keys(item, _CERTIFICATE_KEYS, where)
        certificates[checked_name] = IssuedCertificate(
            certificate=_pem(entry["certificate"], f"{where}.certificate"),
            chain=_pem(entry["chain"], f"{where}.chain"),
        )
    return certificates


def _pem(value: object, where: str) -> str:
    text = _checked(value, check_no_nul, where)
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ValueError(f"{where} must be PEM certificates")
    return text


class _NextNonce:
    """The nonce handed out with the last answer, until it is taken or too close to expiry."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._nonce: str | None = None
        self._usable_until = 0.0
        self.lifetime = DEFAULT_NONCE_LIFETIME

    def keep(self, response: httpx.Response) -> None:
        """Keep the answer's next nonce, if it has one of the right shape."""
        nonce = response.headers.get(NEXT_NONCE_HEADER)
        if nonce is None or not _NONCE_SHAPE.fullmatch(nonce):
            return
        with self._lock:
            self._nonce = nonce
            self._usable_until = self._clock() + self.lifetime - NEXT_NONCE_MARGIN

    def take(self) -> str | None:
        with self._lock:
            nonce, self._nonce = self._nonce, None
            return nonce if nonce is not None and self._clock() <= self._usable_until else None


class EnclaveClient:
    """A client for the enclave API at ``url``, trusting only ``ca_certificate_pem``.

    ``ca_certificate_pem`` is the CA certificate of a CAS casctl attested (it is required:
    nothing is trusted unpinned). ``transport`` replaces the network, for tests.
    """

    def __init__(
        self,
        url: str,
        ca_certificate_pem: bytes,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        _require_pin(ca_certificate_pem)
        self.url = url.rstrip("/")
        self._client = ApiChannel(
            self.url, ca_certificate_pem=ca_certificate_pem, transport=transport
        )
        self._next = _NextNonce()

    def __enter__(self) -> EnclaveClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._client.close()

    def nonce(self) -> str:
        """A fresh single-use nonce from ``POST /v1/enclave/nonce`` (64 lowercase hex digits).

        Raises :class:`CasUnreachable`, :class:`ApiError`, or :class:`ClientError` when the
        answer has no nonce of that shape.
        """
        return _nonce_of(self._client.send("POST", ENCLAVE_NONCE_PATH), self._next)

    def take_next_nonce(self) -> str | None:
        """The nonce the CAS handed out with this client's last successful attestation, once;
        None when there is none, it was taken, or less than :data:`NEXT_NONCE_MARGIN` seconds
        of its lifetime are left."""
        return self._next.take()

    def attest(
        self,
        config_id: ConfigId,
        nonce: str,
        public_key_der_b64: str,
        evidence: Evidence,
        otp: str | None = None,
    ) -> SealedConfig:
        """Post the attestation (with the one-time password ``otp``, if given); return the
        CAS's sealed answer.

        Raises :class:`AttestationRefused` with the CAS's check and message when it refuses
        (403 ``attestation-refused``), :class:`CasUnreachable` when it cannot be reached,
        :class:`ApiError` for other error answers, and :class:`ClientError` when the answer
        does not have exactly the string members ``kem`` and ``sealed``. The answer's next
        nonce is kept for :meth:`take_next_nonce`.
        """
        body = _attest_body(config_id, nonce, public_key_der_b64, evidence, otp)
        try:
            response = self._client.send("POST", ENCLAVE_ATTEST_PATH, json_body=body)
        except ApiError as exc:
            raise _refusal(exc) from exc
        return _sealed_of(response, self._next)

    def report_volume_tag(self, grant: VolumeGrant, previous_tag: str | None, tag: str) -> None:
        """Report the new ``tag`` of the volume ``grant`` names, written from ``previous_tag``.

        Proven with the grant's report secret (``POST /v1/enclave/volume-tag``). Raises
        :class:`ApiError` when the CAS refuses (409 ``stale-volume-tag``: another writer's tag
        is current) and :class:`CasUnreachable` when it cannot be reached.
        """
        proof = report_proof(grant.report_secret, grant.ticket, previous_tag, tag)
        body = {"ticket": grant.ticket, "previous_tag": previous_tag, "tag": tag, "proof": proof}
        self._client.send("POST", ENCLAVE_VOLUME_TAG_PATH, json_body=body)

    open_config = staticmethod(open_config)


class AsyncEnclaveClient(AsyncListenerClient):
    """:class:`EnclaveClient` for asyncio, for programs that attest many workloads at once.

    It trusts only ``ca_certificate_pem``, like :class:`EnclaveClient`, and raises the same
    errors. ``max_connections`` bounds its connection pool (default: httpx's); ``transport``
    replaces the network.
    """

    def __init__(
        self,
        url: str,
        ca_certificate_pem: bytes,
        *,
        max_connections: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        _require_pin(ca_certificate_pem)
        super().__init__(
            url,
            ca_certificate_pem=ca_certificate_pem,
            max_connections=max_connections,
            timeout=timeout,
            transport=transport,
        )
        self._next = _NextNonce()

    async def nonce(self) -> str:
        """A fresh single-use nonce, as :meth:`EnclaveClient.nonce`."""
        return _nonce_of(await self._channel.send("POST", ENCLAVE_NONCE_PATH), self._next)

    def take_next_nonce(self) -> str | None:
        """The next nonce of this client's last successful attestation, as
        :meth:`EnclaveClient.take_next_nonce`."""
        return self._next.take()

    async def attest(
        self,
        config_id: ConfigId,
        nonce: str,
        public_key_der_b64: str,
        evidence: Evidence,
        otp: str | None = None,
    ) -> SealedConfig:
        """Post the attestation (with the one-time password ``otp``, if given), as
        :meth:`EnclaveClient.attest`."""
        body = _attest_body(config_id, nonce, public_key_der_b64, evidence, otp)
        try:
            response = await self._channel.send("POST", ENCLAVE_ATTEST_PATH, json_body=body)
        except ApiError as exc:
            raise _refusal(exc) from exc
        return _sealed_of(response, self._next)


#: The enclave API's routes (their templates, as the CAS's metrics name them).
ENCLAVE_NONCE_PATH = "/v1/enclave/nonce"
ENCLAVE_ATTEST_PATH = "/v1/enclave/attest"
ENCLAVE_VOLUME_TAG_PATH = "/v1/enclave/volume-tag"


def _require_pin(ca_certificate_pem: bytes) -> None:
    if not ca_certificate_pem:
        raise ClientError("the enclave API is used only with the CA of an attested CAS")


def _nonce_of(response: httpx.Response, next_nonce: _NextNonce) -> str:
    """The answer's nonce; its ``expires_in`` becomes the lifetime of the next nonces."""
    try:
        body = response.json()
    except ValueError:
        body = None
    nonce = body.get("nonce") if isinstance(body, dict) else None
    if not isinstance(nonce, str) or not _NONCE_SHAPE.fullmatch(nonce):
        raise ClientError(f"the CAS answered {ENCLAVE_NONCE_PATH} without a valid nonce")
    lifetime = body.get("expires_in") if isinstance(body, dict) else None
    if isinstance(lifetime, int) and not isinstance(lifetime, bool) and lifetime > 0:
        next_nonce.lifetime = float(lifetime)
    return nonce


def _attest_body(
    config_id: ConfigId,
    nonce: str,
    public_key_der_b64: str,
    evidence: Evidence,
    otp: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "config_id": str(config_id),
        "nonce": nonce,
        "public_key": public_key_der_b64,
        "evidence": evidence.to_json(),
    }
    if otp is not None:
        body["otp"] = otp
    return body


def _refusal(error: ApiError) -> CasError:
    """A refusal answer as :class:`AttestationRefused`; any other error answer as it is."""
    if error.status == 403 and error.code == "attestation-refused":
        check = error.details.get("check")
        return AttestationRefused(check if isinstance(check, str) else "unknown", error.message)
    return error


def _sealed_of(response: httpx.Response, next_nonce: _NextNonce) -> SealedConfig:
    try:
        body = response.json()
    except ValueError:
        body = None
    if (
        not isinstance(body, dict)
        or set(body) != {"kem", "sealed"}
        or not all(isinstance(value, str) for value in body.values())
    ):
        raise ClientError(f"the CAS answered {ENCLAVE_ATTEST_PATH} without a sealed configuration")
    next_nonce.keep(response)
    return SealedConfig(kem=body["kem"], sealed=body["sealed"])
