"""The owner config: what the CAS owner provisions the CAS with.

The owner hands it over once, with ``casctl provision --config-file F`` or ``cas provision
--owner-config F``. It shapes the CAS's TLS certificate (``[api_identity]``), says how the CAS
reaches Intel's DCAP collateral (``[dcap]``), where the audit log goes (``[audit_log]``) and
which recovery keys may together bring the CAS back on a new machine (``[recovery]``).
An empty file is a valid owner config: every section is optional.

The file is TOML, JSON (``.json``) or YAML (``.yaml``, ``.yml``), chosen by its extension. It is
validated strictly: an unknown section or key, a wrong type or a bad value is a
:class:`~opencas.errors.ConfigError` that lists every problem, each naming the file, the key
and (for TOML and YAML) the line.

Once parsed, a config has one *normal form* (:meth:`OwnerConfig.normal_form`): synonyms
resolved, defaults filled in, values in canonical spelling. The API carries it, the store keeps
it, and :func:`owner_config_sha256` hashes it, so the same config hashes the same however it was
written. Secret values (the DCAP subscription key, the IAS key) are kept in
:class:`~pydantic.SecretStr`, which never shows them in ``repr`` or ``str``; only
:meth:`OwnerConfig.normal_form` reveals them, and :meth:`OwnerConfig.redacted` is the form to
print.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.x509.oid import NameOID
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from opencas.config.checks import listed_once
from opencas.crypto.canonical import canonical_sha256
from opencas.crypto.encoding import b64_decode
from opencas.crypto.pem import certificate_pem, load_certificate_pem, pem_blocks
from opencas.crypto.recovery import MAX_RECOVERY_KEYS, load_recovery_key, recovery_key_hash
from opencas.dns_names import canonical_hostname, host_name_problem
from opencas.errors import ConfigError
from opencas.sources.files import read_text
from opencas.sources.json import parse_json
from opencas.sources.problems import KeyPath, Problem, in_text_order, nearest_line, render
from opencas.sources.toml import model_problems, parse_toml, show_value, toml_label
from opencas.sources.yaml import YamlSourceError, line_problems, parse_yaml

OwnerConfigFormat = Literal["toml", "json", "yaml"]
"""The text formats an owner config may be written in."""

MAX_ALT_NAMES = 100
REDACTED = "<redacted>"
"""What :meth:`OwnerConfig.redacted` shows in place of a secret value."""
IAS_END_OF_LIFE = (
    "the [ias] section is not used: Intel's EPID attestation service has reached end of life"
)
NORMAL_FORM_SOURCE = "request body"
"""How errors name a normal form given to :func:`owner_config_from_normal_form`."""

_SECRET_KEYS = frozenset({"subscription_key", "sp_key"})
_MAX_SECRET_LENGTH = 256
_MAX_URL_LENGTH = 2048
_MAX_PEM_LENGTH = 65536
# The schema is at most four levels deep (api.identity.alt_names[i]); nothing deeper is valid,
# so the structural checks stop there and leave the rest to the schema's type errors.
_MAX_DEPTH = 8
_Model = TypeVar("_Model", bound=BaseModel)


# --- value checks -------------------------------------------------------------------------------
#
# Messages never quote URLs or secrets: a URL may carry a password, and a secret must never be
# echoed into a log or an API response.

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_HEX32 = re.compile(r"[0-9A-Fa-f]{32}")
_EMAIL_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


def _plain_text(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("contains a control character (such as a newline or a tab)")
    if value != value.strip():
        raise ValueError("has leading or trailing whitespace")
    return value


def _country_code(value: str) -> str:
    if len(value) != 2 or not (value.isascii() and value.isalpha()):
        raise ValueError(f"expected a two-letter country code such as 'DE', got {value!r}")
    return value.upper()


def _email(value: str) -> str:
    local, at, domain = value.rpartition("@")
    if not at or not local:
        raise ValueError(f"{value!r} is not an email address; expected NAME@DOMAIN")
    if len(local) > 64:
        raise ValueError(f"{value!r}: the part before '@' is longer than 64 characters")
    if not _EMAIL_LOCAL.fullmatch(local):
        raise ValueError(
            f"{value!r}: the part before '@' may hold only ASCII letters, digits, "
            "!#$%&'*+/=?^_`{|}~- and single dots between them"
        )
    problem = host_name_problem(domain)
    if problem is not None:
        raise ValueError(f"{value!r}: the domain is not a valid DNS name: {problem}")
    if "." not in domain:
        raise ValueError(f"{value!r}: the domain needs at least two labels, as in example.com")
    return value


def _array_as_tuple(value: object) -> object:
    # Arrays arrive as lists; the config keeps tuples so that it stays immutable and hashable.
    return tuple(value) if isinstance(value, list) else value


def _url(value: str, schemes: tuple[str, ...]) -> str:
    if _CONTROL.search(value) or any(char.isspace() for char in value):
        raise ValueError("a URL may not contain spaces or control characters")
    try:
        parts = urlsplit(value)
        if parts.port == 0:
            raise ValueError
    except ValueError:
        raise ValueError("not a valid URL") from None
    expected = " or ".join(f"{scheme}://" for scheme in schemes)
    if parts.scheme == "http" and "https" in schemes:
        raise ValueError(
            "plain http:// is refused: the connection must be encrypted and authenticated; "
            "use https://"
        )
    if parts.scheme not in schemes:
        raise ValueError(f"expected a URL starting with {expected}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("a URL may not carry a user name or password")
    if not parts.hostname:
        raise ValueError("the URL names no host")
    try:
        canonical_hostname(parts.hostname)
    except ValueError:
        raise ValueError("the URL's host is neither an IP address nor a valid DNS name") from None
    if parts.fragment or value.endswith("#"):
        raise ValueError("a URL may not carry a fragment ('#...')")
    return value


def _https_url(value: str) -> str:
    return _url(value, ("https",))


def _one_certificate(value: str) -> str:
    """The canonical PEM of the one certificate in ``value``; ``ValueError`` saying why not."""
    blocks = pem_blocks(value.encode("utf-8"))
    if not blocks:
        raise ValueError("not PEM: no '-----BEGIN CERTIFICATE-----' line")
    if len(blocks) > 1:
        raise ValueError(f"expected exactly one PEM block (one certificate), found {len(blocks)}")
    label, block = blocks[0]
    if label != "CERTIFICATE":
        raise ValueError(f"the PEM block is a {label[:40]}, not a CERTIFICATE")
    try:
        certificate = load_certificate_pem(block)
    except ValueError:
        raise ValueError("the PEM block does not hold a valid X.509 certificate") from None
    # Re-encoding makes line breaks and surrounding text irrelevant to the hash.
    return certificate_pem(certificate).decode("ascii")


def _spid(value: str) -> str:
    if not _HEX32.fullmatch(value):
        raise ValueError("expected 32 hexadecimal digits")
    return value.lower()


def _secret(value: SecretStr) -> SecretStr:
    text = value.get_secret_value()
    if not text:
        raise ValueError("at least 1 character required, got 0")
    if len(text) > _MAX_SECRET_LENGTH:
        raise ValueError(f"at most {_MAX_SECRET_LENGTH} characters allowed, got {len(text)}")
    if _CONTROL.search(text):
        raise ValueError("contains a control character (such as a newline or a tab)")
    if text != text.strip():
        raise ValueError("has leading or trailing whitespace")
    return value


_Text64 = Annotated[
    str, StringConstraints(min_length=1, max_length=64), AfterValidator(_plain_text)
]
_Text128 = Annotated[
    str, StringConstraints(min_length=1, max_length=128), AfterValidator(_plain_text)
]
_Country = Annotated[str, AfterValidator(_country_code)]
_Email = Annotated[str, StringConstraints(min_length=1, max_length=254), AfterValidator(_email)]
_AltNames = Annotated[
    tuple[Annotated[str, AfterValidator(canonical_hostname)], ...],
    BeforeValidator(_array_as_tuple),
    Field(max_length=MAX_ALT_NAMES),
    AfterValidator(listed_once),
]
_HttpsUrl = Annotated[
    str, StringConstraints(min_length=1, max_length=_MAX_URL_LENGTH), AfterValidator(_https_url)
]
_PemCertificate = Annotated[
    str, StringConstraints(max_length=_MAX_PEM_LENGTH), AfterValidator(_one_certificate)
]
_Spid = Annotated[str, AfterValidator(_spid)]
_Secret = Annotated[SecretStr, AfterValidator(_secret)]
_IasIdentity = Annotated[
    str, StringConstraints(min_length=1, max_length=4096, pattern=r"^[^\x00-\x1f\x7f]+$")
]

# hide_input_in_errors keeps secrets out of a ValidationError's text, should one ever escape.
_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True, hide_input_in_errors=True)


# --- the sections -------------------------------------------------------------------------------


class ApiIdentity(BaseModel):
    """``[api_identity]``: the subject and alternative names of the CAS's TLS certificate.

    Every key is optional; ``alt_names`` holds DNS names (lower-case) and IP addresses
    (canonical form), without duplicates.
    """

    model_config = _STRICT

    # RFC 5280 upper bounds: ub-common-name and ub-organization-name are 64.
    common_name: _Text64 | None = None
    alt_names: _AltNames = ()
    country_name: _Country | None = None
    org_name: _Text64 | None = None
    state_or_province: _Text128 | None = None
    locality: _Text128 | None = None
    email: _Email | None = None

    def subject_name(self) -> x509.Name:
        """The certificate subject: C, ST, L, O, CN and emailAddress, only those that are set.

        An identity that sets none of them gives an empty name; the certificate code supplies
        its own default then.
        """
        present = [
            (NameOID.COUNTRY_NAME, self.country_name),
            (NameOID.STATE_OR_PROVINCE_NAME, self.state_or_province),
            (NameOID.LOCALITY_NAME, self.locality),
            (NameOID.ORGANIZATION_NAME, self.org_name),
            (NameOID.COMMON_NAME, self.common_name),
            (NameOID.EMAIL_ADDRESS, self.email),
        ]
        return x509.Name(
            [x509.NameAttribute(oid, value) for oid, value in present if value is not None]
        )


class DcapConfig(BaseModel):
    """``[dcap]``: where the CAS fetches DCAP collateral, and the key for that service.

    ``pccs_url`` is an https URL (None: the platform's default). ``subscription_key`` is a
    secret; read it with ``get_secret_value()``.
    """

    model_config = _STRICT

    pccs_url: _HttpsUrl | None = None
    subscription_key: _Secret | None = None


AuditLogMode = Literal["disabled", "unsigned", "signed"]
AuditLogSink = Literal["file", "network"]


class AuditLogConfig(BaseModel):
    """``[audit_log]``: whether the CAS writes an audit log, signed or not, and where.

    With ``sink = "network"``, ``url`` (https) is required and ``server_ca_certificate``
    (canonical PEM) is the CA the server's certificate must chain to (without it, the
    platform's default trust store); with ``sink = "file"`` both are refused, so that a config
    never carries settings that have no effect. ``keep_evidence`` keeps what workload decisions
    rested on in the evidence archive beside the log (:mod:`opencas.audit.archive`).
    """

    model_config = _STRICT

    mode: AuditLogMode = "signed"
    sink: AuditLogSink = "file"
    # Validated even when left out, so that a network sink without a URL is caught.
    url: _HttpsUrl | None = Field(default=None, validate_default=True)
    server_ca_certificate: _PemCertificate | None = Field(default=None, validate_default=True)
    # None stands for false, so that the normal form (and hash) of a config that does not keep
    # evidence is the one it had before the key existed.
    keep_evidence: bool | None = None

    @field_validator("keep_evidence")
    @classmethod
    def _false_is_unset(cls, value: bool | None) -> bool | None:
        return True if value else None

    @property
    def keeps_evidence(self) -> bool:
        """Whether the evidence of workload decisions is kept beside the log, for replay."""
        return self.keep_evidence is True

    @field_validator("url")
    @classmethod
    def _url_matches_sink(cls, value: str | None, info: ValidationInfo) -> str | None:
        sink = info.data.get("sink")
        if sink == "network" and value is None:
            raise ValueError('required when sink = "network"')
        if sink == "file" and value is not None:
            raise ValueError('only allowed with sink = "network" (sink is "file")')
        return value

    @field_validator("server_ca_certificate")
    @classmethod
    def _certificate_matches_sink(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("sink") == "file" and value is not None:
            raise ValueError('only allowed with sink = "network" (sink is "file")')
        return value


def _recovery_key(value: str) -> str:
    try:
        der = b64_decode(value)
    except ValueError:
        raise ValueError(
            "not standard base64; a recovery key is the base64 of an X25519 public key's DER "
            "SubjectPublicKeyInfo, as `casctl recovery keygen` prints it"
        ) from None
    try:
        load_recovery_key(der)
    except ValueError as exc:
        raise ValueError(f"not a recovery key: {exc}") from None
    return value


_RecoveryKey = Annotated[
    str, StringConstraints(min_length=1, max_length=256), AfterValidator(_recovery_key)
]


class RecoveryConfig(BaseModel):
    """``[recovery]``: the recovery keys (X25519) and how many of them recover the CAS.

    ``keys`` holds 1 to :data:`MAX_RECOVERY_KEYS` distinct keys, each the standard base64 of a
    DER SubjectPublicKeyInfo; ``threshold`` is 1 to ``len(keys)``. The CAS splits its database
    key so that any ``threshold`` key holders together, and no fewer, can recover it.
    """

    model_config = _STRICT

    keys: Annotated[
        tuple[_RecoveryKey, ...],
        BeforeValidator(_array_as_tuple),
        Field(min_length=1, max_length=MAX_RECOVERY_KEYS),
        AfterValidator(listed_once),
    ]
    threshold: Annotated[int, Field(ge=1, le=MAX_RECOVERY_KEYS)]

    @field_validator("threshold")
    @classmethod
    def _at_most_the_keys(cls, value: int, info: ValidationInfo) -> int:
        keys = info.data.get("keys")
        if keys is not None and value > len(keys):
            raise ValueError(
                f"{value} shares cannot be had from {len(keys)} recovery key(s); "
                f"the threshold must be 1 to {len(keys)}"
            )
        return value

    def key_hashes(self) -> tuple[str, ...]:
        """The key hashes of :attr:`keys`, in their order."""
        return tuple(recovery_key_hash(b64_decode(key)) for key in self.keys)


class IasConfig(BaseModel):
    """``[ias]``: settings for Intel's EPID attestation service, accepted but not used."""

    model_config = _STRICT

    spid: _Spid | None = None
    linkable_quotes: bool = False
    sp_key: _Secret | None = None
    base_uri: _HttpsUrl | None = None
    # SCONE's own spellings of the service address and of the client identity it presents.
    base_url: _HttpsUrl | None = None
    identity: _IasIdentity | None = None


class OwnerConfig(BaseModel):
    """A validated owner config: immutable and hashable; equal configs hash the same.

    A section that sets nothing but defaults is the same as no section, so it is held as None
    (``audit_log`` always holds a value, its defaults included).
    """

    model_config = _STRICT

    api_identity: ApiIdentity | None = None
    dcap: DcapConfig | None = None
    audit_log: AuditLogConfig = Field(default_factory=AuditLogConfig)
    ias: IasConfig | None = None
    recovery: RecoveryConfig | None = None

    @field_validator("api_identity", "dcap", "ias")
    @classmethod
    def _defaults_only_is_absent(cls, section: BaseModel | None) -> BaseModel | None:
        if section is not None and section == type(section)():
            return None
        return section

    def normal_form(self) -> dict[str, Any]:
        """The canonical JSON-able form, secrets included: what the API and the store carry.

        Keys are the section and key names of :class:`OwnerConfig` (``api_identity``, never
        ``api.identity``); defaults are filled in; sections and keys that are not set are left
        out; arrays keep their order. :func:`owner_config_from_normal_form` reads it back.
        """
        return self._form(reveal=True)

    def redacted(self) -> dict[str, Any]:
        """The normal form with every secret value replaced by ``"<redacted>"``: safe to show."""
        return self._form(reveal=False)

    def _form(self, *, reveal: bool) -> dict[str, Any]:
        form: dict[str, Any] = {}
        for name in type(self).model_fields:
            section = getattr(self, name)
            if isinstance(section, BaseModel):
                form[name] = _section_form(section, reveal=reveal)
        return form


def _section_form(section: BaseModel, *, reveal: bool) -> dict[str, Any]:
    form: dict[str, Any] = {}
    for name in type(section).model_fields:
        value = getattr(section, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value() if reveal else REDACTED
        elif isinstance(value, tuple):
            value = list(value)
        form[name] = value
    return form


class _ApiTable(BaseModel):
    """``[api]`` in an owner config file: only ``[api.identity]``, as SCONE configs write it."""

    model_config = _STRICT

    identity: ApiIdentity | None = None


class _OwnerFile(BaseModel):
    """An owner config file as written, with both spellings of the identity section."""

    model_config = _STRICT

    api_identity: ApiIdentity | None = None
    api: _ApiTable | None = None
    dcap: DcapConfig | None = None
    audit_log: AuditLogConfig = Field(default_factory=AuditLogConfig)
    ias: IasConfig | None = None
    recovery: RecoveryConfig | None = None


# --- loading ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadedOwnerConfig:
    """An owner config and the warnings its file gave rise to (``FILE:LINE: text`` each)."""

    config: OwnerConfig
    warnings: tuple[str, ...] = ()


def owner_config_format(path: Path) -> OwnerConfigFormat:
    """The format of the owner config file at ``path``, by extension; TOML unless it says else."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "json"
    if suffix in {".yaml", ".yml"}:
        return "yaml"
    return "toml"


def load_owner_config(path: Path) -> LoadedOwnerConfig:
    """Read and validate the owner config file at ``path``, in the format its extension says.

    Returns the config and its warnings (a ``[ias]`` section is accepted but reported unused).
    Raises :class:`ConfigError` if the file is missing, unreadable or not valid in its format,
    or if any section, key or value is unknown, of the wrong type or invalid; the message lists
    every problem, each naming the file, the key and (for TOML and YAML) the line. Secret
    values never appear in the message.
    """
    return _validate(_parse_text(read_text(path), str(path), owner_config_format(path)))


def parse_owner_config(text: str, source: str, fmt: OwnerConfigFormat) -> LoadedOwnerConfig:
    """Validate the owner config ``text`` written in ``fmt``, as :func:`load_owner_config` does.

    ``source`` names the text in error messages and warnings (a file name, say).
    """
    return _validate(_parse_text(text.removeprefix("\ufeff"), source, fmt))


def owner_config_from_normal_form(obj: object, *, source: str = NORMAL_FORM_SOURCE) -> OwnerConfig:
    """Validate ``obj``, the normal form of an owner config, as from a request body or record.

    Accepts exactly what :meth:`OwnerConfig.normal_form` produces (keys that hold a default may
    be left out), strictly: ``api.identity`` and any other unknown key are refused. Raises
    :class:`ConfigError` listing every problem, each naming ``source`` and the key.
    """
    return _validated(_Document(source, obj, {}), OwnerConfig)[0]


def owner_config_sha256(config: OwnerConfig) -> str:
    """Lowercase hex SHA-256 over the RFC 8785 canonical JSON of ``config.normal_form()``.

    Two files that differ only in format, key order, synonym or spelled-out defaults hash the
    same; any change of a value changes the hash.
    """
    return canonical_sha256(config.normal_form())


@dataclass(frozen=True, slots=True)
class _Document:
    """Parsed text: its name for messages, its data, and the line of every key path known."""

    source: str
    data: object
    lines: Mapping[KeyPath, int]


def _parse_text(text: str, source: str, fmt: OwnerConfigFormat) -> _Document:
    if fmt == "json":
        document = parse_json(text, source, label=toml_label)
        return _Document(source, document.data, document.lines)
    if fmt == "yaml":
        try:
            parsed = parse_yaml(text, source=source, label=toml_label)
        except YamlSourceError as error:
            raise ConfigError(line_problems(error, "YAML")) from None
        return _Document(source, {} if parsed.data is None else parsed.data, parsed.lines())
    toml = parse_toml(text, source)
    return _Document(source, toml.data, toml.lines())


# --- validation ---------------------------------------------------------------------------------


def _validate(document: _Document) -> LoadedOwnerConfig:
    parsed, data = _validated(document, _OwnerFile)
    identity = parsed.api_identity
    if identity is None and parsed.api is not None:
        identity = parsed.api.identity
    config = OwnerConfig(
        api_identity=identity,
        dcap=parsed.dcap,
        audit_log=parsed.audit_log,
        ias=parsed.ias,
        recovery=parsed.recovery,
    )
    warnings: tuple[str, ...] = ()
    if "ias" in data:
        line = document.lines.get(("ias",))
        warnings = (render(Problem(document.source, line, None, IAS_END_OF_LIFE)),)
    return LoadedOwnerConfig(config, warnings)


def _validated(document: _Document, model: type[_Model]) -> tuple[_Model, dict[str, Any]]:
    """``document.data`` validated against ``model``, and the data as validated.

    Raises one :class:`ConfigError` listing every problem: structural ones (nulls, keys that
    are not strings, both spellings of the identity section) and the schema's.
    """
    source, lines = document.source, document.lines
    if not isinstance(document.data, dict):
        what = f"expected a table of sections, got {show_value(document.data)}"
        raise ConfigError(Problem(source, None, None, what))
    problems: list[Problem] = []
    data = _plain_data(document.data, (), problems, source, lines)
    if model is _OwnerFile:
        problems.extend(_synonym_conflict(data, source, lines))
    try:
        parsed = model.model_validate(data)
    except ValidationError as error:
        problems.extend(
            model_problems(
                error, source=source, model=model, data=data, lines=lines, is_secret=_is_secret
            )
        )
        # Not chained: the validation error holds the input, secrets included.
        raise ConfigError(in_text_order(problems)) from None
    if problems:
        raise ConfigError(in_text_order(problems))
    return parsed, data


def _plain_data(
    data: dict[Any, Any],
    path: KeyPath,
    problems: list[Problem],
    source: str,
    lines: Mapping[KeyPath, int],
) -> dict[str, Any]:
    """``data`` without its nulls and non-string keys, each reported in ``problems``.

    JSON and YAML can write both; TOML cannot, and the schema expects neither.
    """
    plain: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            what = f"keys must be strings, got {show_value(key)}"
            problems.append(_problem(source, lines, path, is_table=True, what=what))
        elif value is None:
            what = "null is not a value; leave the key out instead"
            problems.append(_problem(source, lines, (*path, key), is_table=False, what=what))
        elif isinstance(value, dict) and len(path) < _MAX_DEPTH:
            plain[key] = _plain_data(value, (*path, key), problems, source, lines)
        else:
            plain[key] = value
    return plain


def _synonym_conflict(
    data: Mapping[str, Any], source: str, lines: Mapping[KeyPath, int]
) -> Iterator[Problem]:
    api = data.get("api")
    if "api_identity" in data and isinstance(api, dict) and "identity" in api:
        first = lines.get(("api_identity",))
        at = f" (line {first})" if first is not None else ""
        what = f"the same section as [api_identity]{at}; write only one of the two"
        yield _problem(source, lines, ("api", "identity"), is_table=True, what=what)


def _is_secret(path: KeyPath) -> bool:
    """Whether ``path`` holds a secret value (the DCAP subscription key, the IAS key)."""
    return any(part in _SECRET_KEYS for part in path)


def _problem(
    source: str, lines: Mapping[KeyPath, int], loc: KeyPath, *, is_table: bool, what: str
) -> Problem:
    return Problem(source, nearest_line(lines, loc), None, what, toml_label(loc, is_table))
