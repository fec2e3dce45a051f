"""The session model: frozen, strictly validated pydantic models of a normalised session.

A :class:`Session` is what :func:`opencas.policy.parse.parse_session` makes of a session's YAML
text. Every model forbids unknown fields, accepts no type coercion and cannot be changed once
built. The models hold one spelling of each session: lists whose order carries no meaning (the
services, secrets and images, keyed by name; injection files, keyed by path; sets of
measurements, platforms, tolerated findings and advisories) are kept sorted and without
repeats, whatever order they were given in. :meth:`Session.normal_form` is the JSON value that
is stored and hashed (``docs/session-hash.md`` describes it).

The checks that concern one value (a name's alphabet, a measurement's length) and the rules
between the fields of one model (an ``x509`` secret has no ``size``) are enforced here, so that
no code path can build an invalid session. The parser runs the same checks first, through the
``check_*`` functions and :func:`secret_spec_problems` / :func:`cross_reference_problems`, so that
its errors can name the line they concern.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from opencas.crypto.keys import KeyType
from opencas.crypto.x509 import canonical_san_entry

SESSION_LANGUAGE_VERSION: Literal["0.3"] = "0.3"
"""The only session-language version OpenCAS speaks (``0.3``, ``0.3.N`` and ``0.3`` as a number
are read as this)."""

MAX_SESSION_NAME_LENGTH = 512
MAX_SECRET_SIZE = 4096
DEFAULT_SECRET_SIZE = 20
MAX_VALID_FOR_HOURS = 100 * 366 * 24

SecretKind: TypeAlias = Literal["ascii", "binary", "private-key", "x509-ca", "x509"]
"""What a secret is; it decides how the CAS generates it and which placeholder formats fit."""
SECRET_KINDS: tuple[SecretKind, ...] = ("ascii", "binary", "private-key", "x509-ca", "x509")


Endpoint: TypeAlias = Literal["server", "client"]
AttestationMode: TypeAlias = Literal["hardware", "none"]

TOLERABLE: tuple[str, ...] = (
    "aepic-leak",
    "debug-mode",
    "hyperthreading",
    "insecure-configuration",
    "insecure-igpu",
    "outdated-tcb",
    "simulated",
    "software-hardening-needed",
)
"""What ``security.attestation.tolerate`` may list."""

_SEGMENT = re.compile(r"[A-Za-z0-9_\-.~]+")
_SERVICE_NAME = _SEGMENT
_SECRET_NAME = re.compile(r"[A-Za-z0-9_\-]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEX = re.compile(r"[0-9a-f]*")
_ADVISORY = re.compile(r"INTEL-SA-[0-9]{5}")
_VALID_FOR = re.compile(r"([1-9][0-9]{0,6})([dh])")
_PERMISSION = re.compile(r"0[0-7]{3}")
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----")


# --- value checks ---------------------------------------------------------------------------------
#
# Each takes a value already of the right Python type and returns it, or raises ValueError with a
# message that reads after "KEY: " and never quotes a secret value.


def check_session_name(value: str) -> str:
    """A session name: segments of ``[A-Za-z0-9_-.~]`` joined by ``/``, at most 512 characters.

    Empty segments (``a//b``, a leading or trailing ``/``) and the segments ``.`` and ``..``
    are refused, since names read like paths.
    """
    if not value:
        raise ValueError("a session name may not be empty")
    if len(value) > MAX_SESSION_NAME_LENGTH:
        raise ValueError(f"a session name has at most {MAX_SESSION_NAME_LENGTH} characters")
    for segment in value.split("/"):
        if not segment:
            raise ValueError(
                "a session name may not have an empty segment (a leading, trailing or double '/')"
            )
        if not _SEGMENT.fullmatch(segment):
            raise ValueError(
                f"{_quote(value)} is not a valid session name: each '/'-separated segment "
                "may hold only letters, digits and the characters _ - . ~"
            )
        if segment in {".", ".."}:
            raise ValueError("a session name may not have a '.' or '..' segment")
    return value


def check_service_name(value: str) -> str:
    """A service or image name: 1 to 128 of ``[A-Za-z0-9_-.~]``, and not ``.`` or ``..``."""
    if not _SERVICE_NAME.fullmatch(value) or len(value) > 128 or value in {".", ".."}:
        raise ValueError(
            f"{_quote(value)} is not a valid name: use 1 to 128 letters, digits and the "
            "characters _ - . ~"
        )
    return value


def check_secret_name(value: str) -> str:
    """A secret name: 1 to 128 of ``[A-Za-z0-9_-]`` (no dots: they start selectors)."""
    if not _SECRET_NAME.fullmatch(value) or len(value) > 128:
        raise ValueError(
            f"{_quote(value)} is not a valid secret name: use 1 to 128 letters, digits, "
            "'_' and '-' (no dots: '.crt', '.key' and '.chain' select parts of a secret)"
        )
    return value


def check_hex(value: str, digits: int) -> str:
    """``value`` is exactly ``digits`` lowercase hexadecimal digits."""
    if len(value) != digits or not _HEX.fullmatch(value):
        shown = _quote(value) if len(value) <= 200 else "the value"
        raise ValueError(f"expected {digits} lowercase hexadecimal digits, got {shown}")
    return value


def check_hex64(value: str) -> str:
    """64 lowercase hex digits (a SHA-256 digest: key hash, session hash, MRENCLAVE, ...)."""
    return check_hex(value, 64)


def check_hex96(value: str) -> str:
    """96 lowercase hex digits (a SHA-384 digest: MRTD, RTMRs, SNP measurement)."""
    return check_hex(value, 96)


def check_u16(value: int) -> int:
    """An integer in 0..65535 (ISV product id and security version)."""
    if isinstance(value, bool) or not 0 <= value <= 0xFFFF:
        raise ValueError(f"expected an integer from 0 to 65535, got {value!r}")
    return value


def check_secret_size(value: int) -> int:
    """A generated secret's size in bytes: 1..4096."""
    if isinstance(value, bool) or not 1 <= value <= MAX_SECRET_SIZE:
        raise ValueError(f"expected a size from 1 to {MAX_SECRET_SIZE} bytes, got {value!r}")
    return value


def check_valid_for(value: str) -> str:
    """A validity period: ``<N>d`` or ``<N>h`` (``N`` ≥ 1, at most 100 years)."""
    match = _VALID_FOR.fullmatch(value)
    if match is None:
        raise ValueError(
            f"expected a period such as '365d' or '48h' (a whole number of days or hours), "
            f"got {_quote(value)}"
        )
    hours = int(match.group(1)) * (24 if match.group(2) == "d" else 1)
    if hours > MAX_VALID_FOR_HOURS:
        raise ValueError("a validity period may not exceed 100 years")
    return value


_SCONE_PERIOD = re.compile(
    r"([0-9]{1,9})[ \t]*(h|hr|hrs|hours?|d|days?|w|weeks?|y|years?)", re.IGNORECASE
)
# SCONE reads periods as humantime does: a week is 7 days, a year 365.25 days (8766 hours).
_PERIOD_UNITS = {"h": (1, "h"), "d": (1, "d"), "w": (7, "d"), "y": (8766, "h")}


def canonical_valid_for(value: str) -> str:
    """A validity period as SCONE writes it (``90 days``, ``2 weeks``, ``1 year``, ``48h``) in
    the one spelling of the normal form, ``<N>d`` or ``<N>h``; checked as :func:`check_valid_for`.
    """
    match = _SCONE_PERIOD.fullmatch(value.strip())
    if match is None:
        raise ValueError(
            "expected a period such as '365d', '90 days', '2 weeks', '1 year' or '48h' (a whole "
            f"number of hours, days, weeks or years), got {_quote(value)}"
        )
    factor, unit = _PERIOD_UNITS[match.group(2)[0].lower()]
    return check_valid_for(f"{int(match.group(1)) * factor}{unit}")


MAX_IMAGE_NAME_LENGTH = 512


def check_image_name(value: str) -> str:
    """An image name: 1 to 512 characters, no control characters, not blank.

    Any such text is a name (SCONE's images are often named by registry references such as
    ``registry.example/team/app:1.2``); what matters is that it is unique in the session.
    """
    if not value.strip() or len(value) > MAX_IMAGE_NAME_LENGTH or _has_control(value):
        raise ValueError(
            f"{_quote(value)} is not a valid image name: use 1 to {MAX_IMAGE_NAME_LENGTH} "
            "characters without control characters"
        )
    return value


OTP_MIN_SECRET_BYTES = 16
OTP_MAX_SECRET_BYTES = 64
_BASE32 = re.compile(r"[A-Z2-7]+")


def check_otp_secret(value: str) -> str:
    """A TOTP shared secret in its normal spelling: RFC 4648 base32 in uppercase, without
    padding, of 16 to 64 bytes. The message never quotes the value: it is a secret."""
    if not _BASE32.fullmatch(value) or len(value) * 5 // 8 < OTP_MIN_SECRET_BYTES:
        raise ValueError(
            "expected a base32 shared secret (letters A-Z and digits 2-7) of at least "
            f"{OTP_MIN_SECRET_BYTES} bytes ({-(-OTP_MIN_SECRET_BYTES * 8 // 5)} characters)"
        )
    if len(value) * 5 // 8 > OTP_MAX_SECRET_BYTES or len(value) % 8 in (1, 3, 6):
        raise ValueError(
            f"expected a base32 shared secret of at most {OTP_MAX_SECRET_BYTES} bytes, in whole "
            "bytes"
        )
    return value


def canonical_otp_secret(value: str) -> str:
    """A base32 secret as written (any case, spaces, ``=`` padding) in its normal spelling."""
    return check_otp_secret("".join(value.split()).rstrip("=").upper())


def check_permission(value: str) -> str:
    """A file permission in canonical spelling: ``0`` and three octal digits, as ``0600``."""
    if not _PERMISSION.fullmatch(value):
        raise ValueError(
            f"expected an octal permission such as '0600' (no setuid, setgid or sticky bits), "
            f"got {_quote(value)}"
        )
    return value


def check_absolute_path(value: str) -> str:
    """An absolute POSIX path: no NUL, no empty, ``.`` or ``..`` segment, no final ``/``."""
    if not value.startswith("/"):
        raise ValueError(f"expected an absolute path (starting with '/'), got {_quote(value)}")
    if "\x00" in value:
        raise ValueError("a path may not contain a NUL character")
    if len(value) > 4096:
        raise ValueError("a path has at most 4096 characters")
    segments = value[1:].split("/")
    if value != "/" and any(segment in {"", ".", ".."} for segment in segments):
        raise ValueError(
            f"{_quote(value)}: a path may not have empty, '.' or '..' segments or end with '/'"
        )
    return value


def check_environment_name(value: str) -> str:
    """An environment variable name: a letter or ``_``, then letters, digits and ``_``."""
    if not _ENV_NAME.fullmatch(value) or len(value) > 256:
        raise ValueError(
            f"{_quote(value)} is not a valid environment variable name: use a letter or '_' "
            "followed by letters, digits and '_'"
        )
    return value


def check_no_nul(value: str) -> str:
    """Text that a process can receive: no NUL character."""
    if "\x00" in value:
        raise ValueError("may not contain a NUL character")
    return value


def check_san(value: str) -> str:
    """A subject alternative name in canonical spelling: ``dns:NAME`` or ``ip:ADDRESS``."""
    kind, colon, name = value.partition(":")
    if not colon or kind not in ("dns", "ip"):
        raise ValueError(f"expected 'dns:NAME' or 'ip:ADDRESS', got {_quote(value)}")
    canonical = canonical_san_entry(value)
    if canonical == value:
        return value
    if kind == "dns":
        raise ValueError(f"DNS names are written in lowercase, got {_quote(name)}")
    raise ValueError(f"the IP address is written {canonical[3:]!r}, not {_quote(name)}")


def check_advisory(value: str) -> str:
    """An Intel security advisory id ``INTEL-SA-NNNNN``, or ``*`` for every advisory."""
    if value != "*" and not _ADVISORY.fullmatch(value):
        raise ValueError(
            f"expected an advisory id such as 'INTEL-SA-00334' or '*', got {_quote(value)}"
        )
    return value


def check_tolerated(value: str) -> str:
    """One of :data:`TOLERABLE`."""
    if value not in TOLERABLE:
        raise ValueError(
            f"{_quote(value)} cannot be tolerated; expected one of: {', '.join(TOLERABLE)}"
        )
    return value


def _quote(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:77] + "...")


def _sorted_unique(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(set(values)))


SessionName = Annotated[str, AfterValidator(check_session_name)]
ServiceName = Annotated[str, AfterValidator(check_service_name)]
ImageName = Annotated[str, AfterValidator(check_image_name)]
OtpSecret = Annotated[str, AfterValidator(check_otp_secret)]
SecretName = Annotated[str, AfterValidator(check_secret_name)]
Hex64 = Annotated[str, AfterValidator(check_hex64)]
Hex96 = Annotated[str, AfterValidator(check_hex96)]
U16 = Annotated[int, AfterValidator(check_u16)]
AbsolutePath = Annotated[str, AfterValidator(check_absolute_path)]
ProcessText = Annotated[str, AfterValidator(check_no_nul)]
EnvironmentName = Annotated[str, AfterValidator(check_environment_name)]
SortedHex64s = Annotated[tuple[Hex64, ...], AfterValidator(_sorted_unique)]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --- services -------------------------------------------------------------------------------------


class Signer(_Frozen):
    """The SGX signer of an enclave: MRSIGNER, and optionally product id and security version.

    ``isvsvn`` asks for one exact security version and excludes ``isvsvn_min``/``isvsvn_max``,
    which bound it from below and above (both inclusive).
    """

    mrsigner: Hex64
    isvprodid: U16 | None = None
    isvsvn: U16 | None = None
    isvsvn_min: U16 | None = None
    isvsvn_max: U16 | None = None

    @model_validator(mode="after")
    def _versions(self) -> Signer:
        if self.isvsvn is not None and (self.isvsvn_min is not None or self.isvsvn_max is not None):
            raise ValueError(
                "isvsvn names one exact version; it excludes isvsvn_min and isvsvn_max"
            )
        if (
            self.isvsvn_min is not None
            and self.isvsvn_max is not None
            and self.isvsvn_min > self.isvsvn_max
        ):
            raise ValueError("isvsvn_min is greater than isvsvn_max: no version satisfies both")
        return self


class AttestationVariant(_Frozen):
    """One way a service may prove what it runs; every field that is set must hold.

    A tuple field holds alternatives (any of them may match). A variant with no field set would
    accept any code and is refused.
    """

    mrenclave: SortedHex64s = ()
    signer: Signer | None = None
    mrtd: Hex96 | None = None
    rtmr0: Hex96 | None = None
    rtmr1: Hex96 | None = None
    rtmr2: Hex96 | None = None
    rtmr3: Hex96 | None = None
    measurement: Hex96 | None = None
    host_data: Hex64 | None = None
    simulated_measurement: SortedHex64s = ()

    @model_validator(mode="after")
    def _not_empty(self) -> AttestationVariant:
        if not any(
            (
                self.mrenclave,
                self.simulated_measurement,
                *(
                    value is not None
                    for value in (
                        self.signer,
                        self.mrtd,
                        self.rtmr0,
                        self.rtmr1,
                        self.rtmr2,
                        self.rtmr3,
                        self.measurement,
                        self.host_data,
                    )
                ),
            )
        ):
            raise ValueError(
                "an attestation variant must constrain something (mrenclave, signer, mrtd, "
                "rtmr0..rtmr3, measurement, host_data or simulated_measurement); an empty one "
                "would accept any code"
            )
        return self


def check_fspf_key(value: str) -> str:
    """A protection file's key: 64 lowercase hex digits. The message never quotes it."""
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError(
            "an fspf_key is 64 hexadecimal digits (as `casctl fspf encrypt` prints it)"
        )
    return value


def check_fspf_tag(value: str) -> str:
    """A protection file's tag: 32 lowercase hex digits."""
    if not re.fullmatch(r"[0-9a-f]{32}", value):
        raise ValueError(
            "an fspf_tag is 32 hexadecimal digits (as `casctl fspf encrypt` prints it)"
        )
    return value


FspfKey = Annotated[str, AfterValidator(check_fspf_key)]
FspfTag = Annotated[str, AfterValidator(check_fspf_tag)]


class Service(_Frozen):
    """A program that attests to the CAS and receives this configuration.

    ``attestation`` is a tuple of alternatives (any one must hold); ``()`` sets no measurement
    constraint. ``image_name`` names an :class:`Image` of the same session.
    """

    name: ServiceName
    command: tuple[ProcessText, ...] = ()
    environment: dict[EnvironmentName, ProcessText] = Field(default_factory=dict)
    pwd: AbsolutePath | None = None
    image_name: ImageName | None = None
    platforms: SortedHex64s = ()
    attestation: tuple[AttestationVariant, ...] = ()
    one_time_password_shared_secret: OtpSecret | None = None
    fspf_path: AbsolutePath | None = None
    fspf_key: FspfKey | None = Field(default=None, repr=False)
    fspf_tag: FspfTag | None = None

    @model_validator(mode="after")
    def _whole_fspf(self) -> Service:
        if len({self.fspf_path is None, self.fspf_key is None, self.fspf_tag is None}) != 1:
            raise ValueError("'fspf_path', 'fspf_key' and 'fspf_tag' go together")
        return self

    @model_serializer(mode="wrap")
    def _without_unset_otp(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _drop_unset_fspf(_drop_unset_otp(handler(self)))


def _drop_unset_fspf(form: dict[str, Any]) -> dict[str, Any]:
    # As for one-time passwords: a service without a protection file keeps its normal form.
    if form.get("fspf_path") is None:
        for key in ("fspf_path", "fspf_key", "fspf_tag"):
            form.pop(key, None)
    return form


# --- secrets --------------------------------------------------------------------------------------


class ExportRule(_Frozen):
    """Who may import a secret: one session (optionally pinned to its hash) or a namespace.

    A namespace ``N`` admits every session whose name is ``N`` or starts with ``N/``.
    """

    session: SessionName | None = None
    namespace: SessionName | None = None
    session_hash: Hex64 | None = None

    @model_validator(mode="after")
    def _one_target(self) -> ExportRule:
        if (self.session is None) == (self.namespace is None):
            raise ValueError("an export names exactly one of 'session' and 'namespace'")
        if self.session_hash is not None and self.session is None:
            raise ValueError("'session_hash' pins an importing session; it needs 'session'")
        return self


class ImportSpec(_Frozen):
    """Where an imported secret comes from: another session's secret, optionally hash-pinned."""

    session: SessionName
    secret: SecretName
    session_hash: Hex64 | None = None


class SecretSpec(_Frozen):
    """A secret the CAS generates (or takes as given, or imports) for this session.

    ``kind`` is ``None`` only for an imported secret whose YAML left it out: its kind is the
    exporter's, known once the import is resolved. An imported secret has no generation fields.
    ``size`` is filled in (default 20) for a generated ``ascii``/``binary`` secret and is
    ``None`` when ``value`` gives the secret. ``key_type`` is filled in (default ``P-256``) for a
    ``private-key`` and for an ``x509``/``x509-ca`` that has no ``private_key``.
    """

    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, validate_by_name=True, validate_by_alias=True
    )

    name: SecretName
    kind: SecretKind | None
    size: int | None = None
    key_type: KeyType | None = None
    migrate: bool = False
    private_key: SecretName | None = None
    issuer: SecretName | None = None
    common_name: str | None = None
    endpoint: Endpoint | None = None
    san: tuple[Annotated[str, AfterValidator(check_san)], ...] = ()
    valid_for: Annotated[str, AfterValidator(check_valid_for)] | None = None
    value: str | None = None
    export: tuple[ExportRule, ...] = ()
    export_public: bool = False
    import_: ImportSpec | None = Field(default=None, alias="import")

    @model_validator(mode="after")
    def _consistent(self) -> SecretSpec:
        problems = secret_spec_problems(self)
        if problems:
            raise ValueError("; ".join(f"{field}: {message}" for field, message in problems))
        return self


_X509_KINDS = ("x509", "x509-ca")
_GENERATION_FIELDS = (
    "size",
    "key_type",
    "migrate",
    "private_key",
    "issuer",
    "common_name",
    "endpoint",
    "san",
    "valid_for",
    "value",
)
# Which generation fields each kind may carry.
_KIND_FIELDS: dict[str, frozenset[str]] = {
    "ascii": frozenset({"size", "value"}),
    "binary": frozenset({"size", "value"}),
    "private-key": frozenset({"key_type", "migrate", "value"}),
    "x509-ca": frozenset(
        {"key_type", "private_key", "issuer", "common_name", "valid_for", "value"}
    ),
    "x509": frozenset(
        {
            "key_type",
            "private_key",
            "issuer",
            "common_name",
            "endpoint",
            "san",
            "valid_for",
            "value",
        }
    ),
}


def _is_set(spec: SecretSpec, field: str) -> bool:
    value = getattr(spec, field)
    return value not in (None, (), False)


def secret_spec_problems(spec: SecretSpec) -> list[tuple[str, str]]:
    """The rules between the fields of one secret that ``spec`` breaks, as ``(field, message)``.

    Covers: an import carries no generation fields, exports or ``export_public`` (the exporter
    controls those); each kind carries only its own fields; defaults are filled in (``size``
    without ``value``, ``key_type`` without ``private_key``); ``size`` and ``value`` exclude each
    other, as do ``private_key`` and ``key_type``; a certificate given as ``value`` sets no
    generation fields (it may name its ``private_key`` and its ``issuer``); a given ``value``
    has the form of its kind; ``common_name`` is short plain text.
    """
    if spec.import_ is not None:
        what = "an imported secret is made by its exporter; it cannot set this"
        return [
            (field, what)
            for field in (*_GENERATION_FIELDS, "export", "export_public")
            if _is_set(spec, field)
        ]
    if spec.kind is None:
        return [("kind", "a secret that is not imported needs a kind")]
    kind = spec.kind
    problems = [
        (field, f"does not apply to a secret of kind {kind}")
        for field in _GENERATION_FIELDS
        if field not in _KIND_FIELDS[kind] and _is_set(spec, field)
    ]
    if problems:
        return problems
    if kind in ("ascii", "binary"):
        problems.extend(_size_problems(spec, kind))
    elif kind == "private-key" and spec.key_type is None:
        problems.append(("key_type", "a private-key secret needs a key type"))
    elif kind in _X509_KINDS:
        problems.extend(_certificate_problems(spec))
    if spec.value is not None:
        problem = value_problem(kind, spec.value)
        if problem is not None:
            problems.append(("value", problem))
    return problems


def _size_problems(spec: SecretSpec, kind: SecretKind) -> list[tuple[str, str]]:
    if spec.value is None and spec.size is None:
        return [("size", f"a generated {kind} secret needs a size")]
    if spec.value is not None and spec.size is not None:
        return [("size", "'size' and 'value' exclude each other")]
    if spec.size is not None:
        try:
            check_secret_size(spec.size)
        except ValueError as error:
            return [("size", str(error))]
    return []


def _certificate_problems(spec: SecretSpec) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if spec.private_key is None and spec.key_type is None and spec.value is None:
        problems.append(("key_type", "needs a key type when it names no private_key"))
    if spec.private_key is not None and spec.key_type is not None:
        what = "the key type is the named private_key's; it cannot be set here"
        problems.append(("key_type", what))
    if spec.value is not None:
        # As SCONE: a given certificate may name its key (private_key) and the CA that signed
        # it (issuer); without private_key it is a certificate only, such as a trust anchor.
        for field in ("key_type", "common_name", "endpoint", "san", "valid_for"):
            if _is_set(spec, field):
                problems.append((field, "a certificate given as 'value' is not generated"))
    if spec.common_name is not None and (
        not 1 <= len(spec.common_name) <= 64 or _has_control(spec.common_name)
    ):
        what = "expected 1 to 64 characters without control characters"
        problems.append(("common_name", what))
    return problems


def _has_control(text: str) -> bool:
    return any(ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F for char in text)


def value_problem(kind: SecretKind, value: str) -> str | None:
    """What is wrong with ``value`` as the explicit value of a secret of ``kind``, or ``None``.

    ascii: 1..4096 characters, no NUL. binary: standard base64 of 1..4096 bytes. private-key:
    one PEM private key. x509/x509-ca: one or more PEM certificates (the certificate, then its
    chain). Messages never quote the value.
    """
    if kind == "ascii":
        valid = 1 <= len(value) <= MAX_SECRET_SIZE and "\x00" not in value
        return None if valid else f"an ascii value has 1 to {MAX_SECRET_SIZE} characters and no NUL"
    if kind == "binary":
        return _binary_value_problem(value)
    labels = _PEM_BLOCK.findall(value)
    if kind == "private-key":
        if len(labels) != 1 or not labels[0].endswith("PRIVATE KEY"):
            return "a private-key value is one PEM private key ('-----BEGIN PRIVATE KEY-----')"
        return None
    if not labels or any(label != "CERTIFICATE" for label in labels):
        return "a certificate value is one or more PEM certificates ('-----BEGIN CERTIFICATE-----')"
    return None


def _binary_value_problem(value: str) -> str | None:
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return "a binary value is written in standard base64"
    if not 1 <= len(data) <= MAX_SECRET_SIZE:
        return f"a binary value holds 1 to {MAX_SECRET_SIZE} bytes"
    return None


# --- volumes --------------------------------------------------------------------------------------

MAX_VOLUMES_PER_SESSION = 64
"""Volumes one session may declare, and volumes one image may map."""


def check_volume_name(value: str) -> str:
    """A volume name: 1 to 128 of letters, digits, ``_`` and ``-`` (as a secret name)."""
    if not 1 <= len(value) <= 128 or not _SECRET_NAME.fullmatch(value):
        raise ValueError(
            f"a volume name is 1 to 128 letters, digits, '_' or '-', got {_quote(value)}"
        )
    return value


VolumeName = Annotated[str, AfterValidator(check_volume_name)]


class VolumeImport(_Frozen):
    """Where an imported volume comes from: another session's volume, optionally hash-pinned."""

    session: SessionName
    volume: VolumeName
    session_hash: Hex64 | None = None


class Volume(_Frozen):
    """An encrypted volume of the session (``docs/sessions.md#volumes``).

    Without ``fspf_key`` the CAS makes the key and keeps the current tag; with it, the volume
    was encrypted beforehand under that key, and ``fspf_tag`` (which needs ``fspf_key``) names
    its content then (no tag: it starts empty). An imported volume has only ``import``.
    """

    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, validate_by_name=True, validate_by_alias=True
    )

    name: VolumeName
    fspf_key: Hex64 | None = None
    fspf_tag: Hex64 | None = None
    export: tuple[ExportRule, ...] = ()
    import_: VolumeImport | None = Field(default=None, alias="import")

    @model_validator(mode="after")
    def _consistent(self) -> Volume:
        problems = volume_problems(self)
        if problems:
            raise ValueError("; ".join(f"{field}: {message}" for field, message in problems))
        return self


def volume_problems(volume: Volume) -> list[tuple[str, str]]:
    """The rules between one volume's fields that are broken, as ``(field, message)``: an
    imported volume sets nothing else; ``fspf_tag`` needs ``fspf_key``."""
    problems: list[tuple[str, str]] = []
    if volume.import_ is not None:
        for field in ("fspf_key", "fspf_tag", "export"):
            if getattr(volume, field) not in (None, ()):
                problems.append(
                    (field, "an imported volume is kept by its exporter; it cannot set this")
                )
    elif volume.fspf_tag is not None and volume.fspf_key is None:
        problems.append(("fspf_tag", "a tag names content under a key: it needs 'fspf_key'"))
    return problems


class ImageVolume(_Frozen):
    """A volume of the session mapped into an image's services at ``path``."""

    name: VolumeName
    path: AbsolutePath


def _by_volume_path(items: tuple[ImageVolume, ...]) -> tuple[ImageVolume, ...]:
    return tuple(sorted(items, key=lambda item: item.path))


def _drop_empty_volumes(form: dict[str, Any]) -> dict[str, Any]:
    # Volumes came after sessions were first hashed: the key is left out when there are none, so
    # that every session without volumes keeps the normal form and hash it always had.
    if not form.get("volumes"):
        form.pop("volumes", None)
    return form


# --- images ---------------------------------------------------------------------------------------


class InjectionFile(_Frozen):
    """A file the CAS renders (placeholders filled in) and hands to the service at ``path``."""

    path: AbsolutePath
    content: str | None = None
    permission: Annotated[str, AfterValidator(check_permission)] | None = None


def _by_path(files: tuple[InjectionFile, ...]) -> tuple[InjectionFile, ...]:
    return tuple(sorted(files, key=lambda item: item.path))


class Image(_Frozen):
    """A named set of injection files and volume paths that services refer to with
    ``image_name``."""

    name: ImageName
    injection_files: Annotated[tuple[InjectionFile, ...], AfterValidator(_by_path)] = ()
    volumes: Annotated[tuple[ImageVolume, ...], AfterValidator(_by_volume_path)] = ()

    @model_validator(mode="after")
    def _unique_paths(self) -> Image:
        _refuse_repeats((item.path for item in self.injection_files), "injection file path")
        _refuse_repeats((item.name for item in self.volumes), "volume")
        paths = [item.path for item in self.volumes]
        for index, path in enumerate(paths):
            for other in (*paths[:index], *(item.path for item in self.injection_files)):
                if other == path or other.startswith(f"{path}/") or path.startswith(f"{other}/"):
                    raise ValueError(f"the volume path {path!r} overlaps {other!r}")
        return self

    @model_serializer(mode="wrap")
    def _without_no_volumes(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _drop_empty_volumes(handler(self))


# --- access policy --------------------------------------------------------------------------------


class CreatorRule(_Frozen):
    """Satisfied by the identity that created the session."""

    type: Literal["creator"] = "creator"


class AnyRule(_Frozen):
    """Satisfied by anyone, anonymous callers included."""

    type: Literal["any"] = "any"


class NoneRule(_Frozen):
    """Satisfied by no one."""

    type: Literal["none"] = "none"


class KeyRule(_Frozen):
    """Satisfied by a caller whose identity key has this key hash."""

    type: Literal["key"] = "key"
    key_hash: Hex64


class SignerRule(_Frozen):
    """Satisfied by a detached signature, by the key with this hash, over the new session hash."""

    type: Literal["signer"] = "signer"
    key_hash: Hex64


class SecretKeyRule(_Frozen):
    """Satisfied by a caller whose identity key is the key of the certificate that the CAS made
    for the ``x509`` or ``x509-ca`` secret ``secret`` of this session, as it is when the rule
    is decided (SCONE's ``$$SCONE::NAME$$`` in an access policy). A certificate given as
    ``value`` is known from the text and becomes a :class:`KeyRule` instead."""

    type: Literal["secret-key"] = "secret-key"
    secret: SecretName


class AllRule(_Frozen):
    """Satisfied when every one of ``rules`` is (``require-all``)."""

    type: Literal["all"] = "all"
    rules: tuple[AccessRule, ...]

    @model_validator(mode="after")
    def _valid(self) -> AllRule:
        _check_rule_list(self.rules)
        return self


class AtLeastRule(_Frozen):
    """Satisfied when at least ``count`` of ``rules`` are (``require-at-least-N``; any-of: 1)."""

    type: Literal["at-least"] = "at-least"
    count: int
    rules: tuple[AccessRule, ...]

    @model_validator(mode="after")
    def _valid(self) -> AtLeastRule:
        _check_rule_list(self.rules)
        if isinstance(self.count, bool) or not 1 <= self.count <= len(self.rules):
            raise ValueError(
                f"require-at-least-{self.count} needs a count from 1 to the number of rules "
                f"({len(self.rules)})"
            )
        return self


AccessRule = Annotated[
    CreatorRule | AnyRule | NoneRule | KeyRule | SecretKeyRule | SignerRule | AllRule | AtLeastRule,
    Field(discriminator="type"),
]
"""One access rule; the ``type`` member says which."""

AccessRuleModel: TypeAlias = (
    CreatorRule | AnyRule | NoneRule | KeyRule | SecretKeyRule | SignerRule | AllRule | AtLeastRule
)
"""The classes an :data:`AccessRule` may be (for ``isinstance`` and annotations)."""


def _check_rule_list(rules: tuple[AccessRuleModel, ...]) -> None:
    if not rules:
        raise ValueError("a list of access rules may not be empty")
    if len(rules) > 1 and any(isinstance(rule, AnyRule | NoneRule) for rule in rules):
        raise ValueError("ANY and NONE must stand alone, not in a list with other rules")
    seen: set[str] = set()
    for rule in rules:
        key = rule.model_dump_json()
        if key in seen:
            # Counted twice, one identity could satisfy require-at-least-2 on its own.
            raise ValueError("the same rule is listed twice")
        seen.add(key)


def is_governance_tree(rule: AccessRuleModel) -> bool:
    """True when ``rule`` needs more than one party (require-all, or at-least with count > 1),
    or holds a ``signer`` rule, anywhere inside it."""
    if isinstance(rule, SignerRule):
        return True
    if isinstance(rule, AllRule):
        return True
    if isinstance(rule, AtLeastRule):
        return rule.count > 1 or any(is_governance_tree(item) for item in rule.rules)
    return False


class AccessPolicy(_Frozen):
    """Who may read, update and create sessions under this one (default: the creator).

    ``read`` is a flat any-of: no ``signer`` rules and no require-all/at-least-N trees.
    """

    read: AccessRule = Field(default_factory=CreatorRule)
    update: AccessRule = Field(default_factory=CreatorRule)
    create_sessions: AccessRule = Field(default_factory=CreatorRule)

    @model_validator(mode="after")
    def _flat_read(self) -> AccessPolicy:
        if is_governance_tree(self.read):
            raise ValueError(
                "read takes a plain list of identities; signer rules and require-all / "
                "require-at-least-N apply only to update and create_sessions"
            )
        return self


# --- security -------------------------------------------------------------------------------------


def _drop_unset_otp(form: dict[str, Any]) -> dict[str, Any]:
    # The key came after sessions were first hashed: it is left out when unset, so that every
    # session without a one-time password keeps the normal form and hash it always had.
    if form.get("one_time_password_shared_secret") is None:
        form.pop("one_time_password_shared_secret", None)
    return form


class AttestationSecurity(_Frozen):
    """How strict attestation of this session's services is, and which findings it tolerates."""

    mode: AttestationMode = "hardware"
    tolerate: Annotated[
        tuple[Annotated[str, AfterValidator(check_tolerated)], ...],
        AfterValidator(_sorted_unique),
    ] = ()
    ignore_advisories: Annotated[
        tuple[Annotated[str, AfterValidator(check_advisory)], ...],
        AfterValidator(_sorted_unique),
    ] = ()
    one_time_password_shared_secret: OtpSecret | None = None

    @model_serializer(mode="wrap")
    def _without_unset_otp(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _drop_unset_otp(handler(self))


class Security(_Frozen):
    """The session's security settings."""

    attestation: AttestationSecurity = Field(default_factory=AttestationSecurity)


# --- the session ----------------------------------------------------------------------------------


def _by_name(items: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(sorted(items, key=lambda item: str(item.name)))


class Session(_Frozen):
    """A validated, normalised session (SCONE session language v0.3 shape).

    ``services``, ``secrets`` and ``images`` are sorted by name and their names are unique;
    references between them resolve (see :func:`cross_reference_problems`).
    """

    name: SessionName
    version: Literal["0.3"] = "0.3"
    predecessor: Hex64 | None = None
    services: Annotated[tuple[Service, ...], AfterValidator(_by_name)] = ()
    secrets: Annotated[tuple[SecretSpec, ...], AfterValidator(_by_name)] = ()
    images: Annotated[tuple[Image, ...], AfterValidator(_by_name)] = ()
    volumes: Annotated[tuple[Volume, ...], AfterValidator(_by_name)] = ()
    access_policy: AccessPolicy = Field(default_factory=AccessPolicy)
    security: Security = Field(default_factory=Security)

    @model_validator(mode="after")
    def _references(self) -> Session:
        problems = cross_reference_problems(self.services, self.secrets, self.images)
        problems += volume_reference_problems(self.volumes, self.images)
        if problems:
            raise ValueError("; ".join(f"{_dotted(path)}: {message}" for path, message in problems))
        return self

    @model_serializer(mode="wrap")
    def _without_no_volumes(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _drop_empty_volumes(handler(self))

    def normal_form(self) -> dict[str, Any]:
        """The session as its canonical JSON value: every field present (``null`` when unset),
        lists as arrays, the imported-secret field spelled ``import``.

        Two sessions are equal exactly when their normal forms are; this is what is stored and
        what :func:`opencas.policy.hashing.session_hash` hashes.
        """
        return self.model_dump(mode="json", by_alias=True)

    def secret(self, name: str) -> SecretSpec | None:
        """The secret called ``name``, or ``None``."""
        return next((item for item in self.secrets if item.name == name), None)

    def service(self, name: str) -> Service | None:
        """The service called ``name``, or ``None``."""
        return next((item for item in self.services if item.name == name), None)

    def image(self, name: str) -> Image | None:
        """The image called ``name``, or ``None``."""
        return next((item for item in self.images if item.name == name), None)

    def volume(self, name: str) -> Volume | None:
        """The volume called ``name``, or ``None``."""
        return next((item for item in self.volumes if item.name == name), None)


def _dotted(path: Sequence[str | int]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _refuse_repeats(names: Iterable[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"the {what} {name!r} is used twice")
        seen.add(name)


def cross_reference_problems(
    services: Sequence[Service], secrets: Sequence[SecretSpec], images: Sequence[Image]
) -> list[tuple[tuple[str | int, ...], str]]:
    """The reference rules between a session's parts that are broken, as ``(path, message)``.

    Paths index the sequences as given: ``("secrets", 2, "issuer")``. Checks: names are unique
    per kind of part; a service's ``image_name`` names an image; an ``x509``/``x509-ca``'s
    ``private_key`` names a ``private-key`` secret (not an imported one) and its ``issuer`` an
    ``x509-ca`` secret (not an imported one); issuers form no cycle.
    """
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for collection, names in (
        ("services", [item.name for item in services]),
        ("secrets", [item.name for item in secrets]),
        ("images", [item.name for item in images]),
    ):
        first: dict[str, int] = {}
        for index, name in enumerate(names):
            if name in first:
                what = f"the name {name!r} is already used by {collection}[{first[name]}]"
                problems.append(((collection, index, "name"), what))
            else:
                first[name] = index
    image_names = {image.name for image in images}
    for index, service in enumerate(services):
        if service.image_name is not None and service.image_name not in image_names:
            problems.append(
                ((("services", index, "image_name")), f"no image called {service.image_name!r}")
            )
    by_name = {secret.name: secret for secret in secrets}
    for index, secret in enumerate(secrets):
        if secret.private_key is not None:
            target = by_name.get(secret.private_key)
            if target is None or target.kind != "private-key" or target.import_ is not None:
                problems.append(
                    (
                        ("secrets", index, "private_key"),
                        f"no private-key secret called {secret.private_key!r} in this session",
                    )
                )
        if secret.issuer is not None:
            problems.extend(_issuer_problems(index, secret, by_name))
    return problems


def _issuer_problems(
    index: int, secret: SecretSpec, by_name: Mapping[str, SecretSpec]
) -> list[tuple[tuple[str | int, ...], str]]:
    path: tuple[str | int, ...] = ("secrets", index, "issuer")
    issuer = by_name.get(secret.issuer or "")
    if issuer is None or issuer.kind != "x509-ca" or issuer.import_ is not None:
        return [(path, f"no x509-ca secret called {secret.issuer!r} in this session")]
    if _issuer_cycle(secret.name, dict(by_name)):
        return [(path, "the issuers form a cycle back to this secret")]
    return _given_issuer_problems(index, secret, issuer)


def is_certificate_only(spec: SecretSpec) -> bool:
    """Whether ``spec`` is a certificate given as ``value`` without its private key."""
    return spec.kind in _X509_KINDS and spec.value is not None and spec.private_key is None


def _given_issuer_problems(
    index: int, secret: SecretSpec, issuer: SecretSpec
) -> list[tuple[tuple[str | int, ...], str]]:
    """A generated certificate needs an issuer with a key; a given one, an issuer given too
    (a CA this CAS makes cannot have signed it)."""
    path: tuple[str | int, ...] = ("secrets", index, "issuer")
    if secret.value is None and is_certificate_only(issuer):
        what = f"the issuer {issuer.name!r} is a certificate given without its private_key"
        return [(path, f"{what}: it cannot sign")]
    if secret.value is not None and issuer.value is None:
        what = "a certificate given as 'value' names an issuer given as 'value' too"
        return [(path, f"{what}; {issuer.name!r} is generated here and cannot have signed it")]
    return []


def volume_reference_problems(
    volumes: Sequence[Volume], images: Sequence[Image]
) -> list[tuple[tuple[str | int, ...], str]]:
    """The volume rules between a session's parts that are broken, as ``(path, message)``:
    volume names are unique, at most :data:`MAX_VOLUMES_PER_SESSION` volumes, and every volume
    an image maps is a volume of the session."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    if len(volumes) > MAX_VOLUMES_PER_SESSION:
        problems.append(
            (("volumes",), f"a session declares at most {MAX_VOLUMES_PER_SESSION} volumes")
        )
    first: dict[str, int] = {}
    for index, volume in enumerate(volumes):
        if volume.name in first:
            what = f"the name {volume.name!r} is already used by volumes[{first[volume.name]}]"
            problems.append((("volumes", index, "name"), what))
        first.setdefault(volume.name, index)
    for index, image in enumerate(images):
        for at, mapped in enumerate(image.volumes):
            if mapped.name not in first:
                problems.append(
                    (("images", index, "volumes", at, "name"), f"no volume called {mapped.name!r}")
                )
    return problems


def _issuer_cycle(start: str, by_name: dict[str, SecretSpec]) -> bool:
    seen = {start}
    current = by_name.get(start)
    while current is not None and current.issuer is not None:
        if current.issuer in seen:
            return current.issuer == start
        seen.add(current.issuer)
        current = by_name.get(current.issuer)
    return False


AllRule.model_rebuild()
AtLeastRule.model_rebuild()
AccessPolicy.model_rebuild()
