"""Reading sessions: YAML text (SCONE session language v0.3 shape) to a validated :class:`Session`.

:func:`parse_session` accepts the language a policy author writes — including SCONE's spellings
and legacy forms — and returns the one normalised :class:`~opencas.policy.model.Session` it
means. Everything wrong with the text is collected and raised as one
:class:`~opencas.policy.errors.SessionError` whose problems each name the key path and the
line and column. Unknown keys are errors that list the expected ones; SCONE features OpenCAS
does not implement are errors that name the feature: nothing is ever silently ignored.

:func:`session_from_normal_form` reads a stored normal form back, strictly.

What the parser accepts beyond the normal form (each is normalised away):

- ``version: "0.3"``, ``0.3`` (a number) and ``"0.3.N"``;
- ``$$SCONE::...$$`` for ``$$CAS::...$$``;
- a service's ``command`` as one string (split like a POSIX shell) or a list;
- a service's ``attestation`` as one mapping or a list of them; ``mrenclave`` and
  ``simulated_measurement`` as one string or a list; the service-level ``mrenclaves:`` list;
- hex digests in either case;
- a secret's ``dns: [...]`` (becomes ``san: ["dns:..."]``); ``san`` entries with an uppercase
  ``DNS:``/``IP:`` prefix, uppercase DNS names, IP addresses in any valid spelling;
- ``permission`` as ``"600"``, ``"0600"`` or ``"0o600"``;
- access rules as a certificate PEM or public key PEM (becomes the key hash), a key hash,
  ``{signer: PEM or key hash}``, ``CREATOR``/``ANY``/``NONE`` in any case, one rule without a
  list, ``require-all`` / ``require-at-least-N`` trees (``update`` and ``create_sessions`` only);
- ``ignore_advisories: "*"`` for ``["*"]``, advisory ids in any case;
- ``null`` for an optional key, meaning the key is left out.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from opencas.crypto.canonical import canonical_json
from opencas.crypto.keys import DEFAULT_KEY_TYPE, KEY_TYPES, key_hash
from opencas.crypto.pem import (
    load_certificate_chain_pem,
    load_certificate_pem,
    load_private_key_pem,
    load_public_key_pem,
)
from opencas.crypto.scone_keys import looks_like_base58check, scone_key_hash, scone_signer_key_hash
from opencas.crypto.x509 import canonical_san_entry, certificate_key_hash
from opencas.policy.errors import SessionError
from opencas.policy.model import (
    DEFAULT_SECRET_SIZE,
    MAX_VOLUMES_PER_SESSION,
    SECRET_KINDS,
    SESSION_LANGUAGE_VERSION,
    AccessPolicy,
    AccessRuleModel,
    AllRule,
    AnyRule,
    AtLeastRule,
    AttestationSecurity,
    AttestationVariant,
    CreatorRule,
    ExportRule,
    Image,
    ImageVolume,
    ImportSpec,
    InjectionFile,
    KeyRule,
    NoneRule,
    SecretKeyRule,
    SecretKind,
    SecretSpec,
    Security,
    Service,
    Session,
    Signer,
    SignerRule,
    Volume,
    VolumeImport,
    canonical_otp_secret,
    canonical_valid_for,
    check_absolute_path,
    check_advisory,
    check_environment_name,
    check_fspf_key,
    check_fspf_tag,
    check_hex,
    check_image_name,
    check_no_nul,
    check_permission,
    check_secret_name,
    check_service_name,
    check_session_name,
    check_tolerated,
    check_u16,
    check_volume_name,
    cross_reference_problems,
    is_certificate_only,
    secret_spec_problems,
    volume_problems,
)
from opencas.policy.placeholders import (
    PlaceholderSyntaxError,
    canonical,
    contains_placeholder,
    find_placeholders,
    validate,
)
from opencas.sources.problems import (
    KeyPath,
    Problem,
    describe,
    format_path,
    in_text_order,
    validation_problems,
)
from opencas.sources.yaml import YamlDocument, YamlSourceError, parse_yaml

Purpose = Literal["create", "update", "check"]
"""What a session text is parsed for: ``create`` forbids ``predecessor``, ``update`` requires it,
``check`` accepts either."""
NORMAL_FORM_SOURCE = "stored session"
"""How errors name a normal form given to :func:`session_from_normal_form`."""

_T = TypeVar("_T")
_M = TypeVar("_M", bound=BaseModel)

_SESSION_KEYS = (
    "name",
    "version",
    "predecessor",
    "services",
    "secrets",
    "images",
    "volumes",
    "access_policy",
    "security",
)
# What `scone session read` adds to a session's text: facts about the stored session, not part
# of the policy. A text read back from SCONE is accepted with a note that they are ignored.
_READ_BACK_KEYS = {
    "creator": "the creator of a session here is whoever creates it",
    "persistency": "this CAS always keeps its sessions in its encrypted store",
    "created": "this CAS records a session's creation time itself",
    "updated": "this CAS records a session's update time itself",
    "hash": "this CAS computes the session hash from the text",
}
_SERVICE_KEYS = (
    "name",
    "command",
    "environment",
    "pwd",
    "image_name",
    "platforms",
    "attestation",
    "mrenclaves",
    "one_time_password_shared_secret",
    "fspf_path",
    "fspf_key",
    "fspf_tag",
)
_VARIANT_KEYS = (
    "mrenclave",
    "signer",
    "mrtd",
    "rtmr0",
    "rtmr1",
    "rtmr2",
    "rtmr3",
    "measurement",
    "host_data",
    "simulated_measurement",
)
_SIGNER_KEYS = ("mrsigner", "isvprodid", "isvsvn", "isvsvn_min", "isvsvn_max")
_SECRET_KEYS = (
    "name",
    "kind",
    "size",
    "key_type",
    "migrate",
    "private_key",
    "issuer",
    "common_name",
    "endpoint",
    "san",
    "dns",
    "valid_for",
    "value",
    "export",
    "export_public",
    "import",
)
_EXPORT_KEYS = ("session", "namespace", "session_hash")
_IMPORT_KEYS = ("session", "secret", "session_hash")
_IMAGE_KEYS = ("name", "injection_files", "volumes")
_VOLUME_KEYS = ("name", "fspf_key", "fspf_tag", "export", "import")
_VOLUME_IMPORT_KEYS = ("session", "volume", "session_hash")
_IMAGE_VOLUME_KEYS = ("name", "path")
_INJECTION_KEYS = ("path", "content", "permission")
_ACCESS_KEYS = ("read", "update", "create_sessions")
_SECURITY_KEYS = ("attestation",)
_ATTESTATION_SECURITY_KEYS = (
    "mode",
    "tolerate",
    "ignore_advisories",
    "one_time_password_shared_secret",
    "trusted_scone_qe_pubkeys",
)

_NOT_SUPPORTED = "is a SCONE feature that OpenCAS does not support; remove it"
_UNSUPPORTED_VOLUMES = {
    "volumes": (
        "a service receives volumes through its image: list them in the image's 'volumes' "
        "(name and path) and name the image in 'image_name'"
    ),
}
_UNSUPPORTED_SERVICE = {
    **_UNSUPPORTED_VOLUMES,
}
_UNSUPPORTED_SECRET = {
    "otp": f"'otp' (one-time passwords) {_NOT_SUPPORTED}",
    "import_akv": (
        f"'import_akv' (import from Azure Key Vault) {_NOT_SUPPORTED}: this CAS does not reach "
        "out to cloud key stores; give the value with 'value' or import it from another session"
    ),
}
_UNSUPPORTED_KINDS = {
    "aad-token": f"kind 'aad-token' (Azure AD tokens) {_NOT_SUPPORTED}",
    "otp": f"kind 'otp' (one-time passwords) {_NOT_SUPPORTED}",
    "one-time-password": f"kind 'one-time-password' {_NOT_SUPPORTED}",
}
_SCONE_QE_NOTE = (
    "'trusted_scone_qe_pubkeys' is ignored: this CAS verifies DCAP quotes only (never quotes of "
    "SCONE's own quoting enclave), so the session's services must attest with DCAP evidence"
)
_VERSION = re.compile(r"0\.3(?:\.(?:0|[1-9][0-9]{0,8}))?")
_AT_LEAST = re.compile(r"require-at-least-([1-9][0-9]{0,3})")
_PEM_BEGIN = "-----BEGIN "
_ENDPOINTS = ("server", "client")
# Where placeholders are replaced; anywhere else they would reach a program as literal text.
_PLACEHOLDER_PLACES = (
    ("services", int, "command"),
    ("services", int, "command", int),
    ("services", int, "environment", str),
    ("services", int, "pwd"),
    ("images", int, "injection_files", int, "content"),
)


@dataclass(frozen=True)
class ReadSession:
    """A session read from its text, and the notes about what the text wrote that this CAS
    accepts but does not use (each ``Problem`` with its path, line and column)."""

    session: Session
    notes: tuple[Problem, ...] = ()


def parse_session(text: str, source: str = "session", *, purpose: Purpose = "check") -> Session:
    """Read the session written in ``text`` (YAML) and return it validated and normalised.

    ``source`` names the text in error messages (a file name, say). ``purpose`` decides about
    ``predecessor``: ``create`` forbids it, ``update`` requires it, ``check`` accepts either.
    Raises :class:`SessionError` — and never anything else — listing every problem found, each
    naming its key path and, where known, its line and column.
    """
    return read_session(text, source, purpose=purpose).session


def read_session(text: str, source: str = "session", *, purpose: Purpose = "check") -> ReadSession:
    """:func:`parse_session`, also returning the notes on what the text wrote but this CAS
    ignores (SCONE's ``session read`` fields, ``trusted_scone_qe_pubkeys``)."""
    try:
        document = parse_yaml(text.removeprefix("\ufeff"), source=source)
    except YamlSourceError as error:
        raise SessionError(
            [
                # A text refused before it was read (too large) is pointed at its start.
                Problem(item.path, item.line or 1, item.column or 1, item.message, item.key)
                for item in error.problems
            ],
            source=source,
        ) from None
    reader = _Reader(document)
    session = reader.session(document.data, purpose)
    if reader.problems or session is None:
        raise SessionError(in_text_order(reader.problems), source=source)
    notes = [
        Problem(source, note.line, note.column, note.message, note.key)
        for note in in_text_order(reader.notes)
    ]
    return ReadSession(session, tuple(notes))


def session_from_normal_form(obj: object, *, source: str = NORMAL_FORM_SOURCE) -> Session:
    """Read back a session's normal form (as :meth:`Session.normal_form` returns it).

    Strict: every key must be present, with exactly the types and the one spelling the normal
    form has (lists sorted where the normal form sorts them); anything else raises
    :class:`SessionError` naming ``source`` and the key path.
    """
    if not isinstance(obj, dict):
        raise SessionError(
            f"a session's normal form is a JSON object, got {describe(obj)}", source=source
        )
    try:
        encoded = canonical_json(obj)
    except ValueError as error:
        raise SessionError(str(error), source=source) from None
    try:
        session = Session.model_validate_json(encoded)
    except ValidationError as error:
        problems = validation_problems(
            error.errors(include_url=False),
            source=source,
            text_path=_text_path,
            explain=_pydantic_words,
            is_secret=is_secret_value,
        )
        raise SessionError(problems, source=source) from None
    expected = session.normal_form()
    if canonical_json(expected) != encoded:
        path = _first_difference(expected, obj, ())
        raise SessionError(
            Problem.about(
                format_path(path),
                "not in normal form: a key is missing, or the value is not in its one spelling "
                "(lists sorted and without repeats, hex in lowercase, defaults written out)",
            ),
            source=source,
        )
    return session


def export_place(
    text: str, secret: str, rule: ExportRule, collection: str = "secrets"
) -> tuple[str, int, int] | None:
    """Where ``text`` (a session's YAML) writes ``rule`` among the exports of ``secret`` (a
    secret, or with ``collection`` ``"volumes"`` a volume).

    Returns the key path as the text's language writes it (``secrets[2].export[0]``), and the
    line and column there; ``None`` when the text does not parse or holds no such export.
    """
    try:
        document = parse_yaml(text.removeprefix("\ufeff"))
    except YamlSourceError:
        return None
    top = document.data
    secrets = top.get(collection) if isinstance(top, dict) else None
    if not isinstance(secrets, list):
        return None
    target_key, target = (
        ("session", rule.session) if rule.session is not None else ("namespace", rule.namespace)
    )
    for index, item in enumerate(secrets):
        if not isinstance(item, dict) or item.get("name") != secret:
            continue
        exports = item.get("export")
        paths: list[tuple[KeyPath, object]] = (
            [((collection, index, "export", at), one) for at, one in enumerate(exports)]
            if isinstance(exports, list)
            else [((collection, index, "export"), exports)]
        )
        for path, written in paths:
            if (
                isinstance(written, dict)
                and written.get(target_key) == target
                and written.get("session_hash") == rule.session_hash
            ):
                where = document.position(path)
                if where is not None:
                    return format_path(path), where.line, where.column
    return None


def _first_difference(expected: object, given: object, path: KeyPath) -> KeyPath:
    """The first path at which ``given`` differs from ``expected`` (``path`` if at the top)."""
    if isinstance(expected, dict) and isinstance(given, dict):
        for key in sorted(set(expected) | set(given), key=str):
            if key not in expected or key not in given:
                return (*path, key)
            if canonical_json(expected[key]) != canonical_json(given[key]):
                return _first_difference(expected[key], given[key], (*path, key))
    if isinstance(expected, list) and isinstance(given, list) and len(expected) == len(given):
        for index, (left, right) in enumerate(zip(expected, given, strict=True)):
            if canonical_json(left) != canonical_json(right):
                return _first_difference(left, right, (*path, index))
    return path


def _text_path(loc: KeyPath) -> KeyPath:
    """A model location as the session text writes it: the field ``import_`` is ``import``."""
    return tuple("import" if part == "import_" else part for part in loc)


def _pydantic_words(item: ErrorDetails, _path: KeyPath) -> str:
    # The normal form is read back as it was stored, so pydantic's message is kept whole.
    return item["msg"]


def is_secret_value(path: KeyPath) -> bool:
    """Whether ``path`` holds a secret value in a session: a secret's ``value``, a
    ``one_time_password_shared_secret``, or a volume's ``fspf_key``."""
    if path and path[-1] == "one_time_password_shared_secret":
        return True
    if len(path) == 3 and path[0] == "volumes" and path[2] == "fspf_key":
        return True
    return len(path) == 3 and path[0] == "secrets" and path[2] == "value"


class _Reader:
    """Turns the plain data of one document into models, collecting every problem on the way."""

    def __init__(self, document: YamlDocument) -> None:
        self.document = document
        self.problems: list[Problem] = []
        self.notes: list[Problem] = []
        # Every text that held placeholders, for checks that need the whole session first.
        self.placeholder_texts: list[tuple[KeyPath, str]] = []
        # What a certificate secret named in an access policy stands for (its key hash), or
        # why it cannot stand for an identity.
        self.secret_identities: dict[str, tuple[str | None, str]] = {}
        # Certificate secrets of this session that the CAS generates: an identity once made.
        self.generated_certificates: frozenset[str] = frozenset()

    # --- reporting --------------------------------------------------------------------------

    def fail(self, path: KeyPath, message: str, *, at_value: bool = True) -> None:
        """Record a problem at ``path``: where its value is written, or else its key."""
        line, column = self.place(path, at_value=at_value)
        self.problems.append(Problem("", line, column, message, format_path(path)))

    def note(self, path: KeyPath, message: str) -> None:
        """Record that the text writes ``path``, which is accepted and ignored."""
        line, column = self.place(path, at_value=False)
        self.notes.append(Problem("", line, column, message, format_path(path)))

    def place(self, path: KeyPath, *, at_value: bool = True) -> tuple[int, int]:
        """The line and column of ``path``'s value (or its key), or of its nearest ancestor."""
        where = (self.document.value_positions.get(path) if at_value else None) or (
            self.document.position(path)
        )
        # Only an empty document has no position at all; its first line is where to look.
        return (where.line, where.column) if where is not None else (1, 1)

    def checked(self, path: KeyPath, value: _T, check: Callable[[_T], _T]) -> _T | None:
        """``check(value)``, or ``None`` with its complaint recorded at ``path``."""
        try:
            return check(value)
        except ValueError as error:
            self.fail(path, str(error))
            return None

    def build(self, at: KeyPath, model: type[_M], /, **fields: Any) -> _M | None:
        """``model(**fields)``; its validation errors (which the reader's own checks should have
        caught first) recorded below ``path``."""
        try:
            return model(**fields)
        except ValidationError as error:

            def text_path(loc: KeyPath) -> KeyPath:
                return (*at, *_text_path(loc)) if loc and loc[0] in fields else at

            self.problems.extend(
                validation_problems(
                    error.errors(include_url=False),
                    source="",
                    text_path=text_path,
                    locate=self.place,
                    is_secret=is_secret_value,
                )
            )
            return None

    # --- shapes ----------------------------------------------------------------------------

    def mapping(
        self,
        path: KeyPath,
        value: object,
        keys: Sequence[str],
        what: str,
        unsupported: Mapping[str, str] | None = None,
    ) -> dict[str, object] | None:
        """``value`` as a mapping with only ``keys`` (nulls dropped), or ``None`` if not one."""
        if not isinstance(value, dict):
            self.fail(path, f"expected a mapping ({what}), got {describe(value)}")
            return None
        known: dict[str, object] = {}
        for key, item in value.items():
            if unsupported is not None and key in unsupported:
                self.fail((*path, key), unsupported[key], at_value=False)
            elif key not in keys:
                self.fail(
                    (*path, key), f"unknown key; expected one of: {', '.join(keys)}", at_value=False
                )
            elif item is not None:
                known[key] = item
        return known

    def require(self, path: KeyPath, data: Mapping[str, object], key: str) -> object | None:
        """``data[key]``, or ``None`` with "required key is missing" recorded."""
        if key not in data:
            self.fail((*path, key), "required key is missing", at_value=False)
            return None
        return data[key]

    def sequence(self, path: KeyPath, value: object, what: str) -> list[tuple[KeyPath, object]]:
        """The items of the list ``value`` with their paths; ``[]`` (and a problem) otherwise."""
        if not isinstance(value, list):
            self.fail(path, f"expected a list of {what}, got {describe(value)}")
            return []
        return [((*path, index), item) for index, item in enumerate(value)]

    def one_or_many(self, path: KeyPath, value: object) -> list[tuple[KeyPath, object]]:
        """A list's items with their paths, or one value standing for a list of one."""
        if isinstance(value, list):
            return [((*path, index), item) for index, item in enumerate(value)]
        return [(path, value)]

    def string(self, path: KeyPath, value: object, hint: str = "") -> str | None:
        """``value`` if it is a string; else ``None`` and a problem (numbers need quotes)."""
        if isinstance(value, str):
            return value
        if isinstance(value, bool | int | float) and not hint:
            hint = "; write it in quotes"
        self.fail(path, f"expected a string, got {describe(value)}{hint}")
        return None

    def integer(self, path: KeyPath, value: object) -> int | None:
        """``value`` if it is an integer (not a boolean); else ``None`` and a problem."""
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        self.fail(path, f"expected an integer, got {describe(value)}")
        return None

    def boolean(self, path: KeyPath, value: object) -> bool | None:
        """``value`` if it is ``true`` or ``false``; else ``None`` and a problem."""
        if isinstance(value, bool):
            return value
        self.fail(path, f"expected true or false, got {describe(value)}")
        return None

    def hex_digest(self, path: KeyPath, value: object, digits: int) -> str | None:
        """A hex digest of ``digits`` digits, in either case; returned in lowercase."""
        text = self.string(path, value)
        if text is None:
            return None
        # Checked in lowercase, but a complaint shows the value as it is written.
        return self.checked(path, text, lambda item: _hex_as_written(item, digits))

    def digests(self, path: KeyPath, value: object, digits: int) -> tuple[str, ...]:
        """One hex digest or a list of them, lowercased."""
        found = [self.hex_digest(p, item, digits) for p, item in self.one_or_many(path, value)]
        return tuple(item for item in found if item is not None)

    # --- the session -----------------------------------------------------------------------

    def session(self, data: object, purpose: Purpose) -> Session | None:
        if not isinstance(data, dict):
            got = "an empty document" if data is None else describe(data)
            self.fail(
                (),
                f"a session is a mapping with the keys {', '.join(_SESSION_KEYS)}; got {got}",
            )
            return None
        policy = {key: item for key, item in data.items() if key not in _READ_BACK_KEYS}
        for key in data:
            if key in _READ_BACK_KEYS:
                self.note(
                    (key,),
                    f"'{key}' is what SCONE's `session read` reports about a stored session; it "
                    f"is not part of the policy and is ignored ({_READ_BACK_KEYS[key]})",
                )
        top = self.mapping((), policy, _SESSION_KEYS, "the session")
        if top is None:
            return None
        name_value = self.require((), top, "name")
        name = None
        if name_value is not None:
            text = self.string(("name",), name_value)
            name = None if text is None else self.checked(("name",), text, check_session_name)
        version = self.version(top)
        predecessor = self.predecessor(top, purpose)
        secrets, secret_paths = self.secrets(top.get("secrets"))
        kinds = _declared_kinds(top.get("secrets"))
        kinds.update({spec.name: spec.kind for spec in secrets})
        services, service_paths = self.services(top.get("services"), kinds)
        images, image_paths = self.images(top.get("images"), kinds)
        self.secret_identities = _secret_identities(secrets)
        self.generated_certificates = frozenset(
            spec.name
            for spec in secrets
            if spec.kind in ("x509", "x509-ca") and spec.value is None and spec.import_ is None
        )
        volumes = self.volumes(top.get("volumes"))
        access = self.access_policy(top.get("access_policy"))
        security = self.security(top.get("security"))
        self.stray_placeholders(data, ())
        self.certificate_values(secrets, secret_paths)
        paths = {"services": service_paths, "secrets": secret_paths, "images": image_paths}
        written = _written_names(data)
        for (collection, index, field), message in cross_reference_problems(
            services, secrets, images
        ):
            path = (*paths[str(collection)][int(index)], str(field))
            if _refers_to_broken_part(data, path, field, written, services, secrets, images):
                continue  # the part it names has its own error, reported there
            self.fail(path, message)
        self.volume_references(volumes, images, image_paths)
        if self.problems or name is None or version is None or access is None or security is None:
            return None
        return self.build(
            (),
            Session,
            name=name,
            version=version,
            predecessor=predecessor,
            services=tuple(services),
            secrets=tuple(secrets),
            images=tuple(images),
            volumes=tuple(volume for volume, _ in volumes),
            access_policy=access,
            security=security,
        )

    def version(self, top: Mapping[str, object]) -> Literal["0.3"] | None:
        value = self.require((), top, "version")
        if value is None:
            return None
        path = ("version",)
        if isinstance(value, float) and value == 0.3:
            return SESSION_LANGUAGE_VERSION
        if isinstance(value, str) and _VERSION.fullmatch(value):
            return SESSION_LANGUAGE_VERSION
        shown = repr(value[:20]) if isinstance(value, str) else describe(value)
        if value in ("0.2", 0.2) or (isinstance(value, str) and value.startswith("0.2.")):
            self.fail(
                path,
                f"session language version {shown} is SCONE's older language, which OpenCAS "
                'does not read; rewrite the session in version "0.3"',
            )
            return None
        self.fail(
            path,
            f'unsupported session language version {shown}; OpenCAS reads version "0.3" '
            '(also written 0.3 or "0.3.N")',
        )
        return None

    def predecessor(self, top: Mapping[str, object], purpose: Purpose) -> str | None:
        path = ("predecessor",)
        if "predecessor" not in top:
            if purpose == "update":
                self.fail(
                    path,
                    "required key is missing: an update names the hash of the session version "
                    "it replaces (`casctl session read NAME --json` shows it)",
                    at_value=False,
                )
            return None
        value = self.hex_digest(path, top["predecessor"], 64)
        if purpose == "create":
            self.fail(
                path,
                "a new session has no predecessor; remove the key (or update the existing "
                "session instead)",
                at_value=False,
            )
            return None
        return value

    # --- services --------------------------------------------------------------------------

    def services(
        self, value: object, kinds: Mapping[str, SecretKind | None]
    ) -> tuple[list[Service], list[KeyPath]]:
        built: list[Service] = []
        paths: list[KeyPath] = []
        if value is None:
            return built, paths
        for path, item in self.sequence(("services",), value, "services"):
            service = self.service(path, item, kinds)
            if service is not None:
                built.append(service)
                paths.append(path)
        return built, paths

    def service(
        self, path: KeyPath, value: object, kinds: Mapping[str, SecretKind | None]
    ) -> Service | None:
        before = len(self.problems)
        data = self.mapping(path, value, _SERVICE_KEYS, "a service", _UNSUPPORTED_SERVICE)
        if data is None:
            return None
        name = self.name(path, data, check_service_name)
        command = self.command((*path, "command"), data.get("command"), kinds)
        environment: dict[str, str] = {}
        if "environment" in data:
            environment = self.environment((*path, "environment"), data["environment"], kinds)
        pwd = None
        if "pwd" in data:
            pwd = self.placeholder_text(
                (*path, "pwd"), _without_final_slash(data["pwd"]), kinds, check_absolute_path
            )
        image_name = None
        if "image_name" in data:
            text = self.string((*path, "image_name"), data["image_name"])
            if text is not None:
                image_name = self.checked((*path, "image_name"), text, check_image_name)
        otp_secret = None
        if "one_time_password_shared_secret" in data:
            otp_secret = self.otp_secret(
                (*path, "one_time_password_shared_secret"), data["one_time_password_shared_secret"]
            )
        platforms: tuple[str, ...] = ()
        if "platforms" in data:
            found = [
                self.hex_digest(item_path, item, 64)
                for item_path, item in self.sequence(
                    (*path, "platforms"), data["platforms"], "key hashes"
                )
            ]
            platforms = tuple(item for item in found if item is not None)
        attestation = self.attestation(path, data)
        fspf = self.fspf(path, data)
        if len(self.problems) > before or name is None:
            return None
        return self.build(
            path,
            Service,
            **fspf,
            name=name,
            command=command,
            environment=environment,
            pwd=pwd,
            image_name=image_name,
            platforms=platforms,
            attestation=attestation,
            one_time_password_shared_secret=otp_secret,
        )

    def name(
        self, path: KeyPath, data: Mapping[str, object], check: Callable[[str], str]
    ) -> str | None:
        value = self.require(path, data, "name")
        if value is None:
            return None
        text = self.string((*path, "name"), value)
        return None if text is None else self.checked((*path, "name"), text, check)

    def fspf(self, path: KeyPath, data: Mapping[str, object]) -> dict[str, str]:
        """A service's protection file: ``fspf_path``, ``fspf_key`` and ``fspf_tag``, all three
        or none (docs/sessions.md). Hex in either case; the key is never quoted."""
        names = ("fspf_path", "fspf_key", "fspf_tag")
        given = [name for name in names if name in data]
        if not given:
            return {}
        if len(given) != len(names):
            missing = ", ".join(f"'{name}'" for name in names if name not in given)
            self.fail((*path, given[0]), f"a protection file needs {missing} too")
            return {}
        checks: dict[str, Callable[[str], str]] = {
            "fspf_path": check_absolute_path,
            "fspf_key": lambda text: check_fspf_key(text.lower()),
            "fspf_tag": lambda text: check_fspf_tag(text.lower()),
        }
        found: dict[str, str] = {}
        for name in names:
            text = self.string((*path, name), data[name])
            checked = None if text is None else self.checked((*path, name), text, checks[name])
            if checked is not None:
                found[name] = checked
        return found

    def otp_secret(self, path: KeyPath, value: object) -> str | None:
        """A TOTP shared secret (base32), in its normal spelling."""
        text = self.string(path, value)
        return None if text is None else self.checked(path, text, canonical_otp_secret)

    def command(
        self, path: KeyPath, value: object, kinds: Mapping[str, SecretKind | None]
    ) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str):
            try:
                items = shlex.split(value, posix=True)
            except ValueError as error:
                self.fail(path, f"the command line cannot be split into arguments: {error}")
                return ()
            # Placeholders are checked after splitting: quotes removed by the split could
            # otherwise join text into a placeholder that was never checked.
            valid = [self.placeholders(path, argument, kinds) for argument in items]
            if not all(valid) or any(self.checked(path, a, check_no_nul) is None for a in items):
                return ()
            return tuple(canonical(argument) for argument in items)
        if not isinstance(value, list):
            self.fail(path, f"expected a string or a list of strings, got {describe(value)}")
            return ()
        arguments: list[str] = []
        for item_path, item in self.sequence(path, value, "arguments"):
            text = self.placeholder_text(item_path, item, kinds, check_no_nul)
            if text is not None:
                arguments.append(text)
        return tuple(arguments)

    def environment(
        self, path: KeyPath, value: object, kinds: Mapping[str, SecretKind | None]
    ) -> dict[str, str]:
        if not isinstance(value, dict):
            self.fail(
                path, f"expected a mapping of variable names to strings, got {describe(value)}"
            )
            return {}
        result: dict[str, str] = {}
        for key, item in value.items():
            item_path = (*path, key)
            if self.checked(item_path, key, check_environment_name) is None or item is None:
                continue
            written = item
            if isinstance(item, bool | int | float):
                # SCONE passes an unquoted number or boolean as the text it is written as.
                written = self.document.scalar_texts.get(item_path, str(item))
            text = self.placeholder_text(item_path, written, kinds, check_no_nul)
            if text is not None:
                result[key] = text
        return result

    def placeholder_text(
        self,
        path: KeyPath,
        value: object,
        kinds: Mapping[str, SecretKind | None],
        check: Callable[[str], str],
    ) -> str | None:
        """A string that may hold placeholders, checked as if each placeholder were a word."""
        text = self.string(path, value)
        if text is None or not self.placeholders(path, text, kinds):
            return None
        try:
            rendered = "".join(
                _PLACEHOLDER_STANDIN if index % 2 else part
                for index, part in enumerate(_split_placeholders(text))
            )
        except PlaceholderSyntaxError:
            return None
        if self.checked(path, rendered, check) is None:
            return None
        return canonical(text)

    def placeholders(
        self, path: KeyPath, text: str, kinds: Mapping[str, SecretKind | None]
    ) -> bool:
        """Check the placeholders in ``text``; ``False`` (with problems recorded) if any is bad."""
        problems = validate(text, kinds)
        # Problems come in text order: count lines onwards from the previous one, not from the
        # start each time, which would be quadratic in a text with many bad placeholders.
        line, counted_to = 0, 0
        for problem in problems:
            line += text.count("\n", counted_to, problem.start)
            counted_to = problem.start
            where = f" (line {line + 1} of the text)" if "\n" in text else ""
            self.fail(path, f"{problem.message}{where}")
        if not problems and "$$" in text:
            self.placeholder_texts.append((path, text))
        return not problems

    def attestation(
        self, path: KeyPath, data: Mapping[str, object]
    ) -> tuple[AttestationVariant, ...]:
        variants: list[AttestationVariant] = []
        if "attestation" in data:
            for item_path, item in self.one_or_many((*path, "attestation"), data["attestation"]):
                variant = self.variant(item_path, item)
                if variant is not None:
                    variants.append(variant)
        if "mrenclaves" not in data:
            return tuple(variants)
        legacy_path = (*path, "mrenclaves")
        before = len(self.problems)
        legacy = self.digests(legacy_path, data["mrenclaves"], 64)
        if not legacy:
            if len(self.problems) == before:  # else each bad value is reported already
                self.fail(legacy_path, "expected at least one MRENCLAVE")
            return tuple(variants)
        if not variants and "attestation" not in data:
            return (AttestationVariant(mrenclave=legacy),)
        if len(variants) != 1:
            self.fail(
                legacy_path,
                "with several attestation variants, write mrenclave in each variant instead "
                "of the service-level mrenclaves",
                at_value=False,
            )
            return tuple(variants)
        merged = variants[0].model_copy(update={"mrenclave": (*variants[0].mrenclave, *legacy)})
        rebuilt = self.build(legacy_path, AttestationVariant, **_fields(merged))
        return () if rebuilt is None else (rebuilt,)

    def variant(self, path: KeyPath, value: object) -> AttestationVariant | None:
        before = len(self.problems)
        data = self.mapping(path, value, _VARIANT_KEYS, "an attestation variant")
        if data is None:
            return None
        fields: dict[str, Any] = {}
        for key in ("mrenclave", "simulated_measurement"):
            if key in data:
                before_key = len(self.problems)
                fields[key] = self.digests((*path, key), data[key], 64)
                if not fields[key] and len(self.problems) == before_key:
                    self.fail((*path, key), "expected at least one measurement")
        for key, digits in (
            ("mrtd", 96),
            ("rtmr0", 96),
            ("rtmr1", 96),
            ("rtmr2", 96),
            ("rtmr3", 96),
            ("measurement", 96),
            ("host_data", 64),
        ):
            if key in data:
                fields[key] = self.hex_digest((*path, key), data[key], digits)
        if "signer" in data:
            fields["signer"] = self.signer((*path, "signer"), data["signer"])
        if len(self.problems) > before:
            return None
        return self.build(path, AttestationVariant, **fields)

    def signer(self, path: KeyPath, value: object) -> Signer | None:
        before = len(self.problems)
        data = self.mapping(path, value, _SIGNER_KEYS, "an enclave signer")
        if data is None:
            return None
        mrsigner_value = self.require(path, data, "mrsigner")
        mrsigner = None
        if mrsigner_value is not None:
            mrsigner = self.hex_digest((*path, "mrsigner"), mrsigner_value, 64)
        fields: dict[str, Any] = {}
        for key in ("isvprodid", "isvsvn", "isvsvn_min", "isvsvn_max"):
            if key in data:
                number = self.integer((*path, key), data[key])
                fields[key] = (
                    None if number is None else self.checked((*path, key), number, check_u16)
                )
        if len(self.problems) > before or mrsigner is None:
            return None
        return self.build(path, Signer, mrsigner=mrsigner, **fields)

    # --- secrets ---------------------------------------------------------------------------

    def secrets(self, value: object) -> tuple[list[SecretSpec], list[KeyPath]]:
        built: list[SecretSpec] = []
        paths: list[KeyPath] = []
        if value is None:
            return built, paths
        for path, item in self.sequence(("secrets",), value, "secrets"):
            spec = self.secret(path, item)
            if spec is not None:
                built.append(spec)
                paths.append(path)
        return built, paths

    def secret(self, path: KeyPath, value: object) -> SecretSpec | None:
        before = len(self.problems)
        data = self.mapping(path, value, _SECRET_KEYS, "a secret", _UNSUPPORTED_SECRET)
        if data is None:
            return None
        name = self.name(path, data, check_secret_name)
        kind = self.kind(path, data)
        fields = self.secret_fields(path, data)
        if len(self.problems) > before or name is None:
            return None
        if "import" not in data and kind is None:
            return None
        fields = _with_defaults(kind, fields)
        candidate = SecretSpec.model_construct(name=name, kind=kind, **fields)
        for field, message in secret_spec_problems(candidate):
            key = "import" if field == "import_" else field
            if key == "san" and "san" not in data:
                key = "dns"
            self.fail((*path, key), message, at_value=key in data)
        if len(self.problems) > before:
            return None
        return self.build(path, SecretSpec, name=name, kind=kind, **fields)

    def secret_fields(self, path: KeyPath, data: Mapping[str, object]) -> dict[str, Any]:
        """The fields of a secret other than its name and kind, as far as they are valid."""
        readers: dict[str, tuple[str, Callable[[KeyPath, object], Any]]] = {
            "size": ("size", self.integer),
            "migrate": ("migrate", self.boolean),
            "export_public": ("export_public", self.boolean),
            "private_key": ("private_key", self.secret_name),
            "issuer": ("issuer", self.secret_name),
            "common_name": ("common_name", self.string),
            "value": ("value", self.string),
            "key_type": ("key_type", lambda at, value: self.choice(at, value, KEY_TYPES)),
            "endpoint": ("endpoint", lambda at, value: self.choice(at, value, _ENDPOINTS)),
            "valid_for": ("valid_for", self.valid_for),
            "export": ("export", self.exports),
            "import": ("import_", self.import_spec),
        }
        fields = {
            field: read((*path, key), data[key])
            for key, (field, read) in readers.items()
            if key in data
        }
        if "san" in data or "dns" in data:
            fields["san"] = self.san(path, data)
        return fields

    def secret_name(self, path: KeyPath, value: object) -> str | None:
        """The name of a secret this secret refers to."""
        text = self.string(path, value)
        return None if text is None else self.checked(path, text, check_secret_name)

    def valid_for(self, path: KeyPath, value: object) -> str | None:
        """A validity period such as ``365d`` or SCONE's ``90 days``, as ``<N>d`` or ``<N>h``."""
        text = self.string(path, value)
        return None if text is None else self.checked(path, text, canonical_valid_for)

    def kind(self, path: KeyPath, data: Mapping[str, object]) -> SecretKind | None:
        kind_path = (*path, "kind")
        if "kind" not in data:
            if "import" not in data:
                self.fail(
                    kind_path,
                    f"required key is missing; expected one of: {', '.join(SECRET_KINDS)}",
                    at_value=False,
                )
            return None
        text = self.string(kind_path, data["kind"])
        if text is None:
            return None
        if text in _UNSUPPORTED_KINDS:
            self.fail(kind_path, _UNSUPPORTED_KINDS[text])
            return None
        for kind in SECRET_KINDS:
            if text == kind:
                return kind
        self.fail(
            kind_path, f"unknown kind {text[:40]!r}; expected one of: {', '.join(SECRET_KINDS)}"
        )
        return None

    def choice(self, path: KeyPath, value: object, allowed: Sequence[_T]) -> _T | None:
        text = self.string(path, value)
        if text is None:
            return None
        for option in allowed:
            if text == option:
                return option
        self.fail(
            path, f"unknown value {text[:40]!r}; expected one of: {', '.join(map(str, allowed))}"
        )
        return None

    def san(self, path: KeyPath, data: Mapping[str, object]) -> tuple[str, ...]:
        entries: list[str] = []
        if "san" in data:
            for item_path, item in self.sequence((*path, "san"), data["san"], "names"):
                text = self.string(item_path, item)
                if text is not None:
                    entry = self.checked(item_path, text, canonical_san_entry)
                    if entry is not None:
                        entries.append(entry)
        if "dns" in data:
            for item_path, item in self.one_or_many((*path, "dns"), data["dns"]):
                text = self.string(item_path, item)
                if text is not None:
                    entry = self.checked(item_path, f"dns:{text}", canonical_san_entry)
                    if entry is not None:
                        entries.append(entry)
        return tuple(dict.fromkeys(entries))

    def exports(self, path: KeyPath, value: object) -> tuple[ExportRule, ...]:
        rules: list[ExportRule] = []
        for item_path, item in self.one_or_many(path, value):
            data = self.mapping(item_path, item, _EXPORT_KEYS, "an export")
            if data is None:
                continue
            fields = self.session_reference(item_path, data, ("session", "namespace"))
            if ("session" in data) == ("namespace" in data):
                self.fail(item_path, "an export names exactly one of 'session' and 'namespace'")
                continue
            if "session_hash" in data and "session" not in data:
                self.fail(
                    (*item_path, "session_hash"),
                    "'session_hash' pins one importing session; it needs 'session', not "
                    "'namespace'",
                    at_value=False,
                )
                continue
            if fields is None:
                continue
            rule = self.build(item_path, ExportRule, **fields)
            if rule is None:
                continue
            if rule in rules:
                self.fail(item_path, "the same export is listed twice")
                continue
            rules.append(rule)
        return tuple(rules)

    def session_reference(
        self, path: KeyPath, data: Mapping[str, object], names: Sequence[str]
    ) -> dict[str, Any] | None:
        """The session names in ``names`` and an optional ``session_hash``, checked."""
        fields: dict[str, Any] = {}
        ok = True
        for key in names:
            if key in data:
                text = self.string((*path, key), data[key])
                fields[key] = (
                    None if text is None else self.checked((*path, key), text, check_session_name)
                )
                ok = ok and fields[key] is not None
        if "session_hash" in data:
            fields["session_hash"] = self.hex_digest(
                (*path, "session_hash"), data["session_hash"], 64
            )
            ok = ok and fields["session_hash"] is not None
        return fields if ok else None

    def import_spec(self, path: KeyPath, value: object) -> ImportSpec | None:
        data = self.mapping(path, value, _IMPORT_KEYS, "an import")
        if data is None:
            return None
        session = self.require(path, data, "session")
        secret = self.require(path, data, "secret")
        fields = self.session_reference(path, data, ("session",))
        secret_name = None
        if secret is not None:
            text = self.string((*path, "secret"), secret)
            secret_name = (
                None if text is None else self.checked((*path, "secret"), text, check_secret_name)
            )
        if fields is None or session is None or secret_name is None:
            return None
        return self.build(path, ImportSpec, secret=secret_name, **fields)

    def certificate_values(self, secrets: Sequence[SecretSpec], paths: Sequence[KeyPath]) -> None:
        """Check explicit PEM values: keys load, certificates load and match their key."""
        keys: dict[str, str] = {}
        for spec, path in zip(secrets, paths, strict=True):
            if spec.kind == "private-key" and spec.value is not None:
                try:
                    keys[spec.name] = key_hash(load_private_key_pem(spec.value.encode("utf-8")))
                except ValueError as error:
                    self.fail((*path, "value"), f"not a usable private key: {error}")
        given: dict[str, x509.Certificate] = {}
        for spec, path in zip(secrets, paths, strict=True):
            if spec.kind not in ("x509", "x509-ca") or spec.value is None:
                continue
            try:
                chain = load_certificate_chain_pem(spec.value.encode("utf-8"))
                certified = certificate_key_hash(chain[0])
            except ValueError as error:
                self.fail((*path, "value"), f"not a usable certificate: {error}")
                continue
            given[spec.name] = chain[0]
            if spec.private_key is None:
                continue
            if spec.private_key not in keys:
                self.fail(
                    (*path, "private_key"),
                    "a certificate given as 'value' needs a private-key secret that is given "
                    "as 'value' too (a generated key cannot match it)",
                )
            elif keys[spec.private_key] != certified:
                self.fail(
                    (*path, "value"),
                    f"the certificate does not certify the key {spec.private_key!r}",
                )
        self.given_issuers(secrets, paths, given)
        self.keyless_references(secrets)

    def given_issuers(
        self,
        secrets: Sequence[SecretSpec],
        paths: Sequence[KeyPath],
        given: Mapping[str, x509.Certificate],
    ) -> None:
        """A certificate given as ``value`` with an ``issuer`` given as ``value`` too must be
        signed by that issuer's certificate."""
        for spec, path in zip(secrets, paths, strict=True):
            if spec.value is None or spec.issuer is None:
                continue
            certificate, issuer = given.get(spec.name), given.get(spec.issuer)
            if certificate is None or issuer is None:
                continue  # a bad value or a generated issuer is reported where it is
            try:
                certificate.verify_directly_issued_by(issuer)
            except (ValueError, TypeError, InvalidSignature):
                self.fail(
                    (*path, "value"), f"the certificate is not signed by the issuer {spec.issuer!r}"
                )

    def keyless_references(self, secrets: Sequence[SecretSpec]) -> None:
        """A placeholder may not ask for the private key of a certificate given without one."""
        keyless = {spec.name for spec in secrets if is_certificate_only(spec)}
        if not keyless:
            return
        for path, text in self.placeholder_texts:
            for found in find_placeholders(text):
                if found.secret in keyless and (
                    found.selector == "key" or found.format == "privatekey"
                ):
                    self.fail(
                        path,
                        f"'{found.secret}' is a certificate given without its private_key: it "
                        "has no key to give",
                    )

    # --- volumes ---------------------------------------------------------------------------

    def volumes(self, value: object) -> list[tuple[Volume, KeyPath]]:
        """The session's volumes that are valid, each with its path in the text."""
        if value is None:
            return []
        built: list[tuple[Volume, KeyPath]] = []
        for path, item in self.sequence(("volumes",), value, "volumes"):
            volume = self.volume(path, item)
            if volume is not None:
                built.append((volume, path))
        return built

    def volume(self, path: KeyPath, value: object) -> Volume | None:
        before = len(self.problems)
        data = self.mapping(path, value, _VOLUME_KEYS, "a volume")
        if data is None:
            return None
        name = self.name(path, data, check_volume_name)
        fields: dict[str, Any] = {}
        if "fspf_key" in data:
            fields["fspf_key"] = self.volume_key((*path, "fspf_key"), data["fspf_key"])
        if "fspf_tag" in data:
            fields["fspf_tag"] = self.hex_digest((*path, "fspf_tag"), data["fspf_tag"], 64)
        if "export" in data:
            fields["export"] = self.exports((*path, "export"), data["export"])
        if "import" in data:
            fields["import_"] = self.volume_import((*path, "import"), data["import"])
        if len(self.problems) > before or name is None:
            return None
        for field, message in volume_problems(Volume.model_construct(name=name, **fields)):
            self.fail((*path, "import" if field == "import_" else field), message, at_value=False)
        if len(self.problems) > before:
            return None
        return self.build(path, Volume, name=name, **fields)

    def volume_key(self, path: KeyPath, value: object) -> str | None:
        """A volume key: 64 hex digits, in either case; a complaint never shows it."""
        if isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]{64}", value):
            return value.lower()
        self.fail(path, "a volume key is 64 hex digits (32 bytes), written in quotes")
        return None

    def volume_import(self, path: KeyPath, value: object) -> VolumeImport | None:
        data = self.mapping(path, value, _VOLUME_IMPORT_KEYS, "a volume import")
        if data is None:
            return None
        session = self.require(path, data, "session")
        volume = self.require(path, data, "volume")
        fields = self.session_reference(path, data, ("session",))
        volume_name = None
        if volume is not None:
            text = self.string((*path, "volume"), volume)
            volume_name = (
                None if text is None else self.checked((*path, "volume"), text, check_volume_name)
            )
        if fields is None or session is None or volume_name is None:
            return None
        return self.build(path, VolumeImport, volume=volume_name, **fields)

    def image_volumes(
        self, path: KeyPath, value: object, files: Mapping[str, KeyPath]
    ) -> list[ImageVolume]:
        """An image's ``volumes``: unique names, paths that overlap no other volume's path and
        no injection file's."""
        if value is None:
            return []
        mapped: list[ImageVolume] = []
        taken: dict[str, KeyPath] = dict(files)
        for item_path, item in self.sequence((*path, "volumes"), value, "volume mappings"):
            data = self.mapping(item_path, item, _IMAGE_VOLUME_KEYS, "a volume mapping")
            if data is None:
                continue
            name = self.name(item_path, data, check_volume_name)
            target = self.require(item_path, data, "path")
            text = None if target is None else self.string((*item_path, "path"), target)
            where = None
            if text is not None:
                where = self.checked((*item_path, "path"), text, check_absolute_path)
            if name is None or where is None:
                continue
            if any(other.name == name for other in mapped):
                self.fail((*item_path, "name"), f"the volume {name!r} is mapped twice")
                continue
            clash = next(
                (
                    at
                    for other, at in taken.items()
                    if other == where
                    or other.startswith(f"{where}/")
                    or where.startswith(f"{other}/")
                ),
                None,
            )
            if clash is not None:
                self.fail((*item_path, "path"), f"the path overlaps {format_path(clash)}")
                continue
            taken[where] = (*item_path, "path")
            mapped.append(ImageVolume(name=name, path=where))
        return mapped

    def volume_references(
        self,
        volumes: Sequence[tuple[Volume, KeyPath]],
        images: Sequence[Image],
        image_paths: Sequence[KeyPath],
    ) -> None:
        """Volume names unique, within the limit, and every mapped volume declared."""
        first: dict[str, KeyPath] = {}
        for volume, path in volumes:
            if volume.name in first:
                self.fail(
                    (*path, "name"),
                    f"the name {volume.name!r} is already used by "
                    f"{format_path(first[volume.name])}",
                )
            first.setdefault(volume.name, path)
        if len(volumes) > MAX_VOLUMES_PER_SESSION:
            self.fail(("volumes",), f"a session declares at most {MAX_VOLUMES_PER_SESSION} volumes")
        written = _written_volume_names(self.document.data)
        for image, path in zip(images, image_paths, strict=True):
            for at, mapped in enumerate(image.volumes):
                if mapped.name not in first and mapped.name not in written:
                    self.fail((*path, "volumes", at, "name"), f"no volume called {mapped.name!r}")

    # --- images ----------------------------------------------------------------------------

    def images(
        self, value: object, kinds: Mapping[str, SecretKind | None]
    ) -> tuple[list[Image], list[KeyPath]]:
        built: list[Image] = []
        paths: list[KeyPath] = []
        if value is None:
            return built, paths
        for path, item in self.sequence(("images",), value, "images"):
            image = self.image(path, item, kinds)
            if image is not None:
                built.append(image)
                paths.append(path)
        return built, paths

    def image(
        self, path: KeyPath, value: object, kinds: Mapping[str, SecretKind | None]
    ) -> Image | None:
        before = len(self.problems)
        data = self.mapping(path, value, _IMAGE_KEYS, "an image")
        if data is None:
            return None
        name = self.name(path, data, check_image_name)
        files: list[InjectionFile] = []
        seen: dict[str, KeyPath] = {}
        if "injection_files" in data:
            for item_path, item in self.sequence(
                (*path, "injection_files"), data["injection_files"], "files"
            ):
                injected = self.injection_file(item_path, item, kinds)
                if injected is None:
                    continue
                if injected.path in seen:
                    self.fail(
                        (*item_path, "path"),
                        f"the path is already used by {format_path(seen[injected.path])}",
                    )
                    continue
                seen[injected.path] = item_path
                files.append(injected)
        mapped = self.image_volumes(path, data.get("volumes"), seen)
        if len(self.problems) > before or name is None:
            return None
        return self.build(
            path, Image, name=name, injection_files=tuple(files), volumes=tuple(mapped)
        )

    def injection_file(
        self, path: KeyPath, value: object, kinds: Mapping[str, SecretKind | None]
    ) -> InjectionFile | None:
        before = len(self.problems)
        data = self.mapping(path, value, _INJECTION_KEYS, "an injection file")
        if data is None:
            return None
        target = self.require(path, data, "path")
        file_path = None
        if target is not None:
            text = self.string((*path, "path"), target)
            file_path = (
                None if text is None else self.checked((*path, "path"), text, check_absolute_path)
            )
        content = None
        if "content" in data:
            content = self.string((*path, "content"), data["content"])
            if content is not None and self.placeholders((*path, "content"), content, kinds):
                content = canonical(content)
        permission = None
        if "permission" in data:
            text = self.string(
                (*path, "permission"),
                data["permission"],
                "; write the octal mode in quotes, as '0600'",
            )
            if text is not None:
                permission = self.checked(
                    (*path, "permission"), _canonical_permission(text), check_permission
                )
        if len(self.problems) > before or file_path is None:
            return None
        return self.build(
            path, InjectionFile, path=file_path, content=content, permission=permission
        )

    # --- access policy ---------------------------------------------------------------------

    def access_policy(self, value: object) -> AccessPolicy | None:
        path: KeyPath = ("access_policy",)
        if value is None:
            return AccessPolicy()
        before = len(self.problems)
        data = self.mapping(path, value, _ACCESS_KEYS, "read, update and create_sessions rules")
        if data is None:
            return None
        read: AccessRuleModel = CreatorRule()
        update: AccessRuleModel = CreatorRule()
        if "read" in data:
            read = self.rules((*path, "read"), data["read"], trees=False) or read
        if "update" in data:
            update = self.rules((*path, "update"), data["update"], trees=True) or update
        create = update
        if "create_sessions" in data:
            create = (
                self.rules((*path, "create_sessions"), data["create_sessions"], trees=True)
                or create
            )
        if len(self.problems) > before:
            return None
        return self.build(path, AccessPolicy, read=read, update=update, create_sessions=create)

    def rules(self, path: KeyPath, value: object, *, trees: bool) -> AccessRuleModel | None:
        """One access rule from a list (any of), a tree, or a single entry; normalised."""
        if isinstance(value, list):
            items = [
                self.rule(p, item, trees=trees) for p, item in self.sequence(path, value, "rules")
            ]
            if not value:
                self.fail(path, "expected at least one rule (write [NONE] to allow no one)")
                return None
            return self.combine(path, items, count=1)
        return self.rule(path, value, trees=trees)

    def rule(self, path: KeyPath, value: object, *, trees: bool) -> AccessRuleModel | None:
        if isinstance(value, str):
            return self.simple_rule(path, value)
        if isinstance(value, list):
            self.fail(path, "a list inside a list of rules; use require-all or require-at-least-N")
            return None
        if not isinstance(value, dict):
            self.fail(
                path,
                "expected an access rule (CREATOR, ANY, NONE, a certificate or a key hash), "
                f"got {describe(value)}",
            )
            return None
        if not trees:
            self.fail(
                path,
                "read takes a plain list of identities (CREATOR, ANY, NONE, certificates, key "
                "hashes); signer, require-all and require-at-least-N apply to update and "
                "create_sessions",
            )
            return None
        return self.tree(path, value)

    def tree(self, path: KeyPath, value: dict[Any, object]) -> AccessRuleModel | None:
        """``{signer: ...}``, ``{require-all: [...]}`` or ``{require-at-least-N: [...]}``."""
        if len(value) != 1:
            self.fail(
                path,
                "a rule mapping has exactly one key: signer, require-all or require-at-least-N",
            )
            return None
        ((key, inner),) = value.items()
        inner_path = (*path, key)
        if key == "signer":
            text = self.string(inner_path, inner)
            hashed = None if text is None else self.identity(inner_path, text)
            return None if hashed is None else SignerRule(key_hash=hashed)
        match = _AT_LEAST.fullmatch(key) if isinstance(key, str) else None
        if key != "require-all" and match is None:
            self.fail(
                inner_path,
                "unknown key; expected one of: signer, require-all, require-at-least-N",
                at_value=False,
            )
            return None
        if not isinstance(inner, list) or not inner:
            self.fail(inner_path, f"expected a non-empty list of rules, got {describe(inner)}")
            return None
        count = len(inner) if match is None else int(match.group(1))
        items = [
            self.rule(item_path, item, trees=True)
            for item_path, item in self.sequence(inner_path, inner, "rules")
        ]
        if count > len(inner):
            self.fail(
                inner_path,
                f"require-at-least-{count} lists only {len(inner)} rules; it could never be met",
                at_value=False,
            )
            return None
        return self.combine(inner_path, items, count=count)

    def combine(
        self, path: KeyPath, items: list[AccessRuleModel | None], *, count: int
    ) -> AccessRuleModel | None:
        if any(item is None for item in items):
            return None
        rules = [item for item in items if item is not None]
        if len(rules) > 1 and any(isinstance(rule, AnyRule | NoneRule) for rule in rules):
            self.fail(path, "ANY and NONE must stand alone, not in a list with other rules")
            return None
        for index, rule in enumerate(rules):
            if rule in rules[:index]:
                self.fail(
                    (*path, index),
                    "the same rule is listed twice (certificates count as their key hashes)",
                )
                return None
        if len(rules) == 1:
            return rules[0]
        if count == len(rules):
            return self.build(path, AllRule, rules=tuple(rules))
        return self.build(path, AtLeastRule, count=count, rules=tuple(rules))

    def simple_rule(self, path: KeyPath, text: str) -> AccessRuleModel | None:
        keyword = text.strip().upper()
        if keyword == "CREATOR":
            return CreatorRule()
        if keyword == "ANY":
            return AnyRule()
        if keyword == "NONE":
            return NoneRule()
        if contains_placeholder(text):
            return self.secret_rule(path, text.strip())
        hashed = self.identity(path, text)
        return None if hashed is None else KeyRule(key_hash=hashed)

    def secret_rule(self, path: KeyPath, text: str) -> KeyRule | SecretKeyRule | None:
        """The rule ``$$CAS::NAME$$`` stands for: the key of a certificate given as ``value``
        (known now), or of one the CAS generates (known once it is made, so decided then)."""
        name = self.secret_reference(path, text)
        if name is None:
            return None
        if name in self.generated_certificates:
            return SecretKeyRule(secret=name)
        hashed, why = self.secret_identities.get(name, (None, "names no secret"))
        if hashed is None:
            self.fail(path, f"'{name}' {why}")
            return None
        return KeyRule(key_hash=hashed)

    def identity(self, path: KeyPath, text: str) -> str | None:
        """The key hash a certificate PEM, public key PEM, key hash (either case) or a
        certificate secret of this session (``$$CAS::NAME$$``, as SCONE writes it) names."""
        if contains_placeholder(text):
            return self.secret_identity(path, text.strip())
        if _PEM_BEGIN in text:
            try:
                return _pem_key_hash(text)
            except ValueError as error:
                self.fail(path, f"not a usable certificate or public key: {error}")
                return None
        return self.key_hash_text(path, text.strip())

    def key_hash_text(self, path: KeyPath, text: str) -> str | None:
        """A key hash written as 64 hex digits (either case) or as SCONE writes one, or a SCONE
        signer key, as our key hash (64 lowercase hex)."""
        candidate = text.lower()
        if len(candidate) == 64 and all(char in "0123456789abcdef" for char in candidate):
            return candidate
        scone = scone_key_hash(text) or scone_signer_key_hash(text)
        if scone is None and looks_like_base58check(text):
            self.fail(
                path,
                "not a SCONE key hash (Base58Check of version 1 and 32 bytes) or SCONE signer "
                "key (version 10, an Ed25519 key): its checksum or version does not match; "
                "copy it again from 'scone self show-key-hash' or 'casctl self show-identity'",
            )
        elif scone is None:
            self.fail(
                path,
                "expected CREATOR, ANY, NONE, a PEM certificate or public key, or a key hash "
                "(64 hexadecimal digits, or SCONE's 50-character form)",
            )
        return scone

    def secret_identity(self, path: KeyPath, text: str) -> str | None:
        """The key hash of the certificate secret ``$$CAS::NAME$$`` (or ``.crt``, ``:crt``,
        ``:pem``) names, given as ``value``: a ``signer`` names a key fixed in the text. A
        problem when it names none, another kind, or a generated one."""
        name = self.secret_reference(path, text)
        if name is None:
            return None
        if name in self.generated_certificates:
            self.fail(
                path,
                f"'{name}' is a certificate this CAS generates: a signer names a key fixed in the "
                "text, so give the certificate as 'value' or write its key hash; outside "
                "'signer', $$CAS::NAME$$ names a generated certificate as an identity",
            )
            return None
        hashed, why = self.secret_identities.get(name, (None, "names no secret"))
        if hashed is None:
            self.fail(path, f"'{name}' {why}")
        return hashed

    def secret_reference(self, path: KeyPath, text: str) -> str | None:
        """The secret ``text`` names, when it is one placeholder alone with no selector or
        format but the certificate's (``.crt``, ``:crt``, ``:pem``)."""
        try:
            found = find_placeholders(text)
        except PlaceholderSyntaxError as error:
            self.fail(path, str(error))
            return None
        if (
            len(found) != 1
            or (found[0].start, found[0].end) != (0, len(text))
            or found[0].selector not in (None, "crt")
            or found[0].format not in (None, "crt", "pem")
        ):
            self.fail(path, "an identity names a certificate secret as $$CAS::NAME$$, alone")
            return None
        return found[0].secret

    # --- security --------------------------------------------------------------------------

    def security(self, value: object) -> Security | None:
        if value is None:
            return Security()
        path: KeyPath = ("security",)
        data = self.mapping(path, value, _SECURITY_KEYS, "security settings")
        if data is None:
            return None
        if "attestation" not in data:
            return Security()
        attestation = self.attestation_security((*path, "attestation"), data["attestation"])
        return None if attestation is None else self.build(path, Security, attestation=attestation)

    def attestation_security(self, path: KeyPath, value: object) -> AttestationSecurity | None:
        before = len(self.problems)
        data = self.mapping(
            path,
            value,
            _ATTESTATION_SECURITY_KEYS,
            "attestation settings",
        )
        if data is None:
            return None
        fields = self.scone_attestation_fields(path, data)
        if "mode" in data:
            text = self.string((*path, "mode"), data["mode"])
            if text == "maa":
                self.fail(
                    (*path, "mode"),
                    f"mode 'maa' (Microsoft Azure Attestation) {_NOT_SUPPORTED}: this CAS "
                    "verifies the evidence itself and trusts no remote attestation service",
                )
            elif text is not None:
                fields["mode"] = self.choice((*path, "mode"), text, ("hardware", "none"))
        if "tolerate" in data:
            found = []
            for item_path, item in self.one_or_many((*path, "tolerate"), data["tolerate"]):
                text = self.string(item_path, item)
                if text is not None and self.checked(item_path, text, check_tolerated) is not None:
                    found.append(text)
            fields["tolerate"] = tuple(found)
        if "ignore_advisories" in data:
            found = []
            for item_path, item in self.one_or_many(
                (*path, "ignore_advisories"), data["ignore_advisories"]
            ):
                text = self.string(item_path, item)
                if text is not None:
                    checked = self.checked(item_path, text.upper(), check_advisory)
                    if checked is not None:
                        found.append(checked)
            fields["ignore_advisories"] = tuple(found)
        if len(self.problems) > before:
            return None
        return self.build(path, AttestationSecurity, **fields)

    def scone_attestation_fields(self, path: KeyPath, data: Mapping[str, object]) -> dict[str, Any]:
        """The one-time password secret, and a note for SCONE's quoting-enclave keys."""
        fields: dict[str, Any] = {}
        if "trusted_scone_qe_pubkeys" in data:
            self.note((*path, "trusted_scone_qe_pubkeys"), _SCONE_QE_NOTE)
        if "one_time_password_shared_secret" in data:
            fields["one_time_password_shared_secret"] = self.otp_secret(
                (*path, "one_time_password_shared_secret"), data["one_time_password_shared_secret"]
            )
        return fields

    # --- placeholders outside their places ------------------------------------------------

    def stray_placeholders(self, value: object, path: KeyPath) -> None:
        """Refuse placeholder text anywhere it would not be replaced."""
        if isinstance(value, dict):
            for key, item in value.items():
                self.stray_placeholders(item, (*path, key))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self.stray_placeholders(item, (*path, index))
        elif (
            isinstance(value, str)
            and contains_placeholder(value)
            and not _placeholder_place(path)
            # An access policy may name a certificate secret as an identity (identity()).
            and path[:1] != ("access_policy",)
        ):
            self.fail(
                path,
                "placeholders ($$CAS::...$$) are replaced only in a service's command, "
                "environment values and pwd, and in injection file content",
            )


_PLACEHOLDER_STANDIN = "x"


def _split_placeholders(text: str) -> list[str]:
    """``text`` cut at its placeholders: text, placeholder, text, ..., text."""
    parts: list[str] = []
    position = 0
    for item in find_placeholders(text):
        parts.extend((text[position : item.start], text[item.start : item.end]))
        position = item.end
    parts.append(text[position:])
    return parts


def _secret_identities(secrets: Sequence[SecretSpec]) -> dict[str, tuple[str | None, str]]:
    """For each secret, the key hash it stands for as an identity, or why it cannot."""
    identities: dict[str, tuple[str | None, str]] = {}
    for spec in secrets:
        if spec.import_ is not None:
            identities[spec.name] = (
                None,
                "is imported: an access policy names only this session's own certificates "
                "(given as 'value' or generated); write the exporter's key hash instead",
            )
        elif spec.kind not in ("x509", "x509-ca"):
            identities[spec.name] = (None, "is not a certificate secret; an identity is a key")
        elif spec.value is None:
            # Generated: decided by SecretKeyRule once the CAS made it (see generated_certificates).
            identities[spec.name] = (None, "is a certificate this CAS generates")
        else:
            try:
                chain = load_certificate_chain_pem(spec.value.encode("utf-8"))
                identities[spec.name] = (certificate_key_hash(chain[0]), "")
            except ValueError:
                # The value's own problem is reported at the secret.
                identities[spec.name] = (None, "has a certificate value that does not load")
    return identities


def _placeholder_place(path: KeyPath) -> bool:
    for pattern in _PLACEHOLDER_PLACES:
        if len(pattern) == len(path) and all(
            isinstance(part, expected) if isinstance(expected, type) else part == expected
            for part, expected in zip(path, pattern, strict=True)
        ):
            return True
    return False


def _fields(model: BaseModel) -> dict[str, Any]:
    return {name: getattr(model, name) for name in type(model).model_fields}


def _declared_kinds(value: object) -> dict[str, SecretKind | None]:
    """Each secret name written in ``value``, with its kind if that is valid (else ``None``).

    Placeholders are checked against these even where a secret's own definition has problems,
    so that one mistake is reported once, not again at every placeholder that uses the secret.
    """
    declared: dict[str, SecretKind | None] = {}
    for item in value if isinstance(value, list) else ():
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            kind = item.get("kind")
            declared[item["name"]] = next((each for each in SECRET_KINDS if each == kind), None)
    return declared


def _with_defaults(kind: SecretKind | None, fields: dict[str, Any]) -> dict[str, Any]:
    """The defaults the normal form spells out: a size, a key type (not for imports)."""
    filled = dict(fields)
    if "import_" in filled:
        return filled
    if kind in ("ascii", "binary") and "value" not in filled and "size" not in filled:
        filled["size"] = DEFAULT_SECRET_SIZE
    if kind == "private-key" and "key_type" not in filled:
        filled["key_type"] = DEFAULT_KEY_TYPE
    if (
        kind in ("x509", "x509-ca")
        and "key_type" not in filled
        and "private_key" not in filled
        and "value" not in filled
    ):
        filled["key_type"] = DEFAULT_KEY_TYPE
    return filled


def _hex_as_written(text: str, digits: int) -> str:
    """``text`` in lowercase if it is ``digits`` hex digits; else the complaint quotes ``text``."""
    try:
        return check_hex(text.lower(), digits)
    except ValueError:
        check_hex(text, digits)  # raises, quoting the text as written
        raise


def _without_final_slash(value: object) -> object:
    """A ``pwd`` as SCONE accepts it, with a final ``/``: the directory without it."""
    if isinstance(value, str) and len(value) > 1 and value.endswith("/"):
        return value.rstrip("/") or "/"
    return value


def _written_names(data: Mapping[Any, object]) -> dict[str, set[str]]:
    """The names the text writes for its services, secrets and images, valid or not."""
    names: dict[str, set[str]] = {}
    for collection in ("services", "secrets", "images"):
        items = data.get(collection)
        names[collection] = {
            item["name"]
            for item in (items if isinstance(items, list) else ())
            if isinstance(item, dict) and isinstance(item.get("name"), str)
        }
    return names


def _written_volume_names(data: object) -> set[str]:
    """The volume names the text writes, valid or not (a broken one has its own error)."""
    items = data.get("volumes") if isinstance(data, dict) else None
    return {
        item["name"]
        for item in (items if isinstance(items, list) else ())
        if isinstance(item, dict) and isinstance(item.get("name"), str)
    }


def _refers_to_broken_part(
    data: Mapping[Any, object],
    path: KeyPath,
    field: object,
    written: Mapping[str, set[str]],
    services: Sequence[Service],
    secrets: Sequence[SecretSpec],
    images: Sequence[Image],
) -> bool:
    """Whether a broken reference at ``path`` names a part the text writes but that did not
    build (it has its own error): then "no image called X" would only mislead."""
    target_collection = {"image_name": "images", "private_key": "secrets", "issuer": "secrets"}
    collection = target_collection.get(str(field))
    if collection is None:
        return False
    named = _value_at(data, path)
    built = {item.name for item in (images if collection == "images" else secrets)}
    del services
    return isinstance(named, str) and named in written[collection] and named not in built


def _value_at(data: object, path: KeyPath) -> object:
    for part in path:
        if isinstance(data, dict) and isinstance(part, str):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return None
    return data


def _canonical_permission(text: str) -> str:
    digits = text.removeprefix("0o")
    if len(digits) == 3:
        digits = "0" + digits
    return digits


def _pem_key_hash(text: str) -> str:
    data = text.encode("utf-8")
    if "-----BEGIN PUBLIC KEY-----" in text:
        return key_hash(load_public_key_pem(data))
    return certificate_key_hash(load_certificate_pem(data))
