"""Secret values: generating them, carrying them over on update, rendering them, importing them.

Pure except for randomness: values come from the operating system's CSPRNG (``secrets`` and
``cryptography``'s key generation), times from the caller (or the clock when not given). Nothing
here logs, and no message or ``repr`` ever shows a secret value or a private key.

What a session's secrets become (``generate_values``):

- ``ascii``: ``size`` random letters and digits; ``binary``: ``size`` random bytes;
  ``private-key``: a new key of ``key_type``; ``x509`` / ``x509-ca``: a certificate for the
  named ``private_key`` (or a new implicit key of ``key_type``), signed by its ``issuer`` or
  self-signed. An explicit ``value`` is used as given.
- On update, ``ascii``/``binary`` values are kept when the name, kind and size are unchanged and
  neither version gives an explicit value; private keys are kept only with ``migrate: true``;
  certificates are issued anew every time (for the kept key, when their ``private_key`` is kept).
- Imported secrets are never generated: their values come from the exporter.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import string
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from opencas.crypto.keys import PrivateKey, generate_private_key, key_hash, key_type_of
from opencas.crypto.pem import (
    certificate_pem,
    load_certificate_chain_pem,
    load_certificate_pem,
    load_private_key_pem,
    private_key_pem,
    public_key_pem,
)
from opencas.crypto.x509 import MAX_COMMON_NAME, Issuer, certificate_key_hash, is_ca_certificate
from opencas.policy.certificates import issue_certificate, parse_valid_for
from opencas.policy.errors import SessionError
from opencas.policy.model import (
    SECRET_KINDS,
    ExportRule,
    ImportSpec,
    SecretKind,
    SecretSpec,
    Session,
)
from opencas.policy.parse import export_place
from opencas.policy.placeholders import SELECTORS, format_problem
from opencas.sources.problems import Problem, in_text_order

ASCII_ALPHABET: Final = string.ascii_letters + string.digits
"""What generated ``ascii`` secrets are made of: printable, and safe unquoted in shells and URLs."""
DEFAULT_VALIDITY: Final[Mapping[str, timedelta]] = {
    "x509": timedelta(days=365),
    "x509-ca": timedelta(days=3650),
}

_FIELDS: Final[Mapping[str, frozenset[str]]] = {
    "ascii": frozenset({"data"}),
    "binary": frozenset({"data"}),
    "private-key": frozenset({"private_key_pem"}),
    "x509-ca": frozenset({"private_key_pem", "certificate_pem", "chain_pem"}),
    "x509": frozenset({"private_key_pem", "certificate_pem", "chain_pem"}),
}
_VALUE_FIELDS: Final = ("data", "private_key_pem", "certificate_pem", "chain_pem")
#: Kinds whose value may be a certificate given without its private key.
_CERTIFICATE_ONLY_KINDS: Final = frozenset({"x509", "x509-ca"})


@dataclass(frozen=True, repr=False)
class SecretValue:
    """The value of one secret.

    ``ascii``/``binary``: ``data`` (for ``ascii``, UTF-8 text). ``private-key``:
    ``private_key_pem`` (PKCS#8). ``x509``/``x509-ca``: ``private_key_pem``, ``certificate_pem``
    and ``chain_pem`` (the certificate followed by its issuers up to the session's root CA);
    a certificate given without its key has no ``private_key_pem``.
    Exactly the fields of its kind are set; anything else raises ``ValueError``. The ``repr``
    shows the kind only.
    """

    kind: SecretKind
    data: bytes | None = None
    private_key_pem: str | None = None
    certificate_pem: str | None = None
    chain_pem: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in SECRET_KINDS:
            raise ValueError(f"unknown secret kind {self.kind!r}")
        present = {name for name in _VALUE_FIELDS if getattr(self, name) is not None}
        expected = _FIELDS[self.kind]
        if self.kind in _CERTIFICATE_ONLY_KINDS and "private_key_pem" not in present:
            expected = expected - {"private_key_pem"}
        if present != expected:
            raise ValueError(
                f"a {self.kind} value has exactly the fields {', '.join(sorted(expected))}"
            )
        if self.data is not None and not isinstance(self.data, bytes):
            raise ValueError("data must be bytes")
        for name in ("private_key_pem", "certificate_pem", "chain_pem"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string")

    def __repr__(self) -> str:
        return f"SecretValue(kind={self.kind!r}, <value hidden>)"

    def private_key(self) -> PrivateKey:
        """The private key of a ``private-key``, ``x509`` or ``x509-ca`` value.

        Raises ``ValueError`` for other kinds or a key that does not load.
        """
        return self._private_key

    @cached_property
    def _private_key(self) -> PrivateKey:
        # Loading a PEM key costs more than using it; a value is immutable, so load it once. A
        # value's key was made by the CAS or checked when it was given (see from_record).
        if self.private_key_pem is None:
            raise ValueError(f"a {self.kind} value has no private key")
        return load_private_key_pem(self.private_key_pem.encode("utf-8"), checked=False)

    def certificate(self) -> x509.Certificate:
        """The certificate of an ``x509`` or ``x509-ca`` value; ``ValueError`` for other kinds."""
        return self._certificate

    @cached_property
    def _certificate(self) -> x509.Certificate:
        if self.certificate_pem is None:
            raise ValueError(f"a {self.kind} value has no certificate")
        return load_certificate_pem(self.certificate_pem.encode("ascii"))

    def issuer(self) -> Issuer:
        """The value's key and certificate as an issuer of certificates, the same one at every
        call (so it is checked once, see :class:`~opencas.crypto.x509.Issuer`).

        Raises ``ValueError`` for a value without a private key or a certificate.
        """
        return self._issuer

    @cached_property
    def _issuer(self) -> Issuer:
        return Issuer(self.private_key(), self.certificate())

    def to_record(self) -> dict[str, str]:
        """The value as a JSON object for the store: ``kind`` and the fields of its kind.

        ``data`` is standard base64; PEM fields are kept as text.
        :meth:`from_record` reads it back.
        """
        record: dict[str, str] = {"kind": self.kind}
        if self.data is not None:
            record["data"] = base64.b64encode(self.data).decode("ascii")
        for name in ("private_key_pem", "certificate_pem", "chain_pem"):
            text = getattr(self, name)
            if text is not None:
                record[name] = text
        return record

    @classmethod
    def from_record(cls, record: object) -> SecretValue:
        """Read a value written by :meth:`to_record`, checking it in full.

        Refuses (``ValueError``, naming the field but never showing its content): a record that
        is not an object, an unknown kind, missing or extra fields, non-string fields, ``data``
        that is not standard base64 or is empty (or, for ``ascii``, not UTF-8), a private key that
        does not load or is of an unsupported type, a certificate field that is not exactly one
        PEM certificate, a chain that does not start with the certificate, and a certificate
        that does not carry the value's private key.
        """
        if not isinstance(record, Mapping):
            raise ValueError("a secret value record must be an object")
        kind = record.get("kind")
        if not isinstance(kind, str) or kind not in SECRET_KINDS:
            raise ValueError("a secret value record needs a known 'kind'")
        expected = _FIELDS[kind] | {"kind"}
        if kind in _CERTIFICATE_ONLY_KINDS and "private_key_pem" not in record:
            expected = expected - {"private_key_pem"}
        if set(record) != expected:
            raise ValueError(
                f"a {kind} value record has exactly the fields {', '.join(sorted(expected))}"
            )
        for name in expected:
            if not isinstance(record[name], str):
                raise ValueError(f"the record's {name} must be a string")
        fields: dict[str, str] = {name: record[name] for name in expected - {"kind"}}
        if "data" in fields:
            return cls(kind=_kind(kind), data=_record_data(kind, fields["data"]))
        if "private_key_pem" not in fields:
            _check_record_certificates(None, fields["certificate_pem"], fields["chain_pem"])
            return cls(
                kind=_kind(kind),
                certificate_pem=fields["certificate_pem"],
                chain_pem=fields["chain_pem"],
            )
        key_pem = fields["private_key_pem"]
        try:
            # A record is the CAS's own, authenticated by the store: its key was made or checked
            # when the session was stored, and is not checked again at every read.
            key = load_private_key_pem(key_pem.encode("utf-8"), checked=False)
        except ValueError as exc:
            raise ValueError(f"the record's private_key_pem: {exc}") from None
        if kind == "private-key":
            return cls(kind="private-key", private_key_pem=key_pem)
        _check_record_certificates(key, fields["certificate_pem"], fields["chain_pem"])
        return cls(
            kind=_kind(kind),
            private_key_pem=key_pem,
            certificate_pem=fields["certificate_pem"],
            chain_pem=fields["chain_pem"],
        )


def generate_values(
    session: Session,
    previous: Mapping[str, SecretValue] | None = None,
    previous_session: Session | None = None,
    imported: Mapping[str, SecretValue] | None = None,
    *,
    now: datetime | None = None,
) -> dict[str, SecretValue]:
    """The values of every secret of ``session``, by secret name, in the session's order.

    ``previous`` and ``previous_session`` are the values and the session of the version being
    replaced (both ``None`` when the session is created); they decide what is carried over (see
    the module documentation). ``imported`` holds the value of each imported secret, by the
    importing secret's name (as the exporter's current version has it); these are returned as
    they are, never generated. Certificates are valid from ``now`` (default: the current time).

    Raises :class:`SessionError` naming each secret that cannot be made: an explicit value that
    does not load, is of another key type than ``key_type``, or (for a certificate) does not
    carry the named private key or is not a CA for ``x509-ca``; ``migrate: true`` on a key whose
    previous value is of another key type; an issuer whose certificate has expired; an imported
    secret without a value in ``imported`` or of another kind than the one it declares.
    Raises ``ValueError`` when only one of ``previous`` / ``previous_session`` is given, when
    ``imported`` names a secret that is not imported, or when ``now`` is naive.
    """
    if (previous is None) != (previous_session is None):
        raise ValueError("previous and previous_session are given together or not at all")
    when = datetime.now(UTC) if now is None else now
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    imports = dict(imported or {})
    importing = {spec.name for spec in session.secrets if spec.import_ is not None}
    strays = sorted(set(imports) - importing)
    if strays:
        raise ValueError(f"imported values given for secrets that are not imported: {strays}")
    generator = _Generator(session, previous or {}, previous_session, imports, when)
    return generator.run()


def render_value(value: SecretValue, selector: str | None, fmt: str | None) -> str:
    """The text a placeholder ``$$CAS::name[.selector][:fmt]$$`` is replaced by.

    Defaults (no selector, no format): ``ascii`` its text; ``binary`` hex; ``private-key`` its
    PKCS#8 PEM; ``x509``/``x509-ca`` the certificate PEM. ``hex``, ``base64`` (standard, padded)
    and ``base64url`` (unpadded) encode ``ascii``/``binary`` data. ``pem`` and ``privatekey``
    give a private key's PKCS#8 PEM. For certificates: ``crt`` the certificate PEM, ``chain`` the
    certificate and its issuers, ``der`` the certificate's DER in standard base64, ``privatekey``
    its key; ``pem`` is the PEM of what the selector (default: the certificate) selects.
    Selectors ``key``, ``crt`` and ``chain`` apply to certificates only and mean the same as
    ``:privatekey``, ``:crt`` and ``:chain``; a format that contradicts the selector is refused.
    Raises ``ValueError`` for any combination that does not fit the value's kind (the parser
    refuses these at upload already).
    """
    if selector is not None and selector not in SELECTORS:
        raise ValueError(f"unknown selector .{selector}; expected one of .crt, .key, .chain")
    # The same rule the parser applied at upload, so the two can never disagree.
    problem = format_problem(value.kind, selector, fmt)
    if problem is not None:
        raise ValueError(problem)
    if value.data is not None:
        return _render_data(value.kind, value.data, fmt)
    if value.kind == "private-key":
        return _required(value.private_key_pem)
    part = selector or {"privatekey": "key", "chain": "chain"}.get(fmt or "", "crt")
    if part == "key":
        return _required(value.private_key_pem)
    if part == "chain":
        return _required(value.chain_pem)
    if fmt == "der":
        der = value.certificate().public_bytes(serialization.Encoding.DER)
        return base64.b64encode(der).decode("ascii")
    return _required(value.certificate_pem)


def certificate_keys(values: Mapping[str, SecretValue]) -> dict[str, str]:
    """The key hash of each ``x509`` and ``x509-ca`` value's certificate, by secret name: what a
    ``secret-key`` access rule names (see :data:`opencas.policy.access.SecretKeys`)."""
    return {
        name: certificate_key_hash(value.certificate())
        for name, value in values.items()
        if value.kind in _CERTIFICATE_ONLY_KINDS
    }


def public_values(session: Session, values: Mapping[str, SecretValue]) -> dict[str, str]:
    """The public form of each secret of ``session`` marked ``export_public: true``, by name.

    ``x509``/``x509-ca``: the certificate PEM; ``private-key``: the public key PEM
    (SubjectPublicKeyInfo); ``ascii``: the text; ``binary``: hex. Private keys never appear. A
    marked secret that has no entry in ``values`` is left out.
    """
    result: dict[str, str] = {}
    for spec in session.secrets:
        value = values.get(spec.name)
        if not spec.export_public or value is None:
            continue
        if value.kind == "private-key":
            result[spec.name] = public_key_pem(value.private_key().public_key()).decode("ascii")
        else:
            result[spec.name] = render_value(value, None, None)
    return result


def check_import(
    importer: Session,
    spec: ImportSpec,
    exporter: Session | None,
    exporter_hash: str | None,
    importer_hash: str | None,
) -> None:
    """Refuse the import ``spec`` of ``importer`` unless the exporter allows it.

    ``exporter`` is the current version of the session named in ``spec`` (``None`` when there is
    none) and ``exporter_hash`` its hash; ``importer_hash`` is the hash of the importing version.
    The import is allowed when: the exporter exists and is another session; a ``session_hash`` in
    ``spec`` equals ``exporter_hash``; the exporter has the secret and does not itself import it;
    its kind is the one the importer declares (if it declares one); and one of the secret's
    ``export`` rules names the importer (``session`` equal to the importer's name, and its
    ``session_hash``, when pinned, equal to ``importer_hash``) or a ``namespace`` that holds it
    (the namespace ``a/b`` holds ``a/b`` and ``a/b/c``, not ``a/bc``).

    Raises :class:`SessionError` whose message names the importing secret, the exporter session
    and secret, and why; ``ValueError`` when ``exporter`` is not the session ``spec`` names.
    """
    index, local = _importing_secret(importer, spec)
    path = f"secrets[{index}].import" if index is not None else "import"
    subject = f"secret {local!r} imports secret {spec.secret!r} of session {spec.session!r}"

    def refuse(why: str) -> SessionError:
        return SessionError(Problem.about(path, f"{subject}, but {why}"))

    if exporter is not None and exporter.name != spec.session:
        raise ValueError(f"the exporter given is {exporter.name!r}, not {spec.session!r}")
    if spec.session == importer.name:
        raise refuse("a session cannot import from itself; use the secret by its own name")
    if exporter is None:
        raise refuse("that session does not exist")
    if spec.session_hash is not None and not same_hash(exporter_hash, spec.session_hash):
        raise refuse(
            f"the import is pinned to session hash {spec.session_hash} and the session's current "
            f"hash is {exporter_hash}; check the new version, then pin its hash"
        )
    exported = exporter.secret(spec.secret)
    if exported is None:
        raise refuse("that session has no such secret")
    if exported.import_ is not None:
        raise refuse(
            f"that secret is itself imported from session {exported.import_.session!r}; "
            "import it from there"
        )
    declared = importer.secrets[index].kind if index is not None else None
    if declared is not None and declared != exported.kind:
        raise refuse(f"it is declared as {declared} and the exported secret is {exported.kind}")
    match = match_export(exported.export, importer.name, importer_hash)
    if match == "allowed":
        return
    if match == "other-hash":
        raise refuse(
            f"the secret is exported to session {importer.name!r} only at session hash "
            f"{_pins(exported, importer.name)}, and this version's hash is {importer_hash}"
        )
    raise refuse(f"the secret is not exported to session {importer.name!r} or a namespace of it")


def unpinned_export_targets(exporter: Session) -> frozenset[str]:
    """The sessions and namespaces that ``exporter``'s export rules name without a hash pin.

    The exporter's own name is left out: a session cannot import from itself, and a namespace
    export to its own name is governed by its own ``create_sessions`` rule.
    """
    return frozenset(
        target
        for secret in exporter.secrets
        for rule in secret.export
        if (target := unpinned_target(exporter.name, rule)) is not None
    )


def unpinned_target(exporter_name: str, rule: ExportRule) -> str | None:
    """The session or namespace ``rule`` names without a hash pin; None when it is pinned or
    names the exporter itself."""
    target = rule.session or rule.namespace
    if rule.session_hash is not None or target is None or target == exporter_name:
        return None
    return target


ExportMatch = Literal["allowed", "other-hash", "not-exported"]


def match_export(
    rules: Iterable[ExportRule], importer_name: str, importer_hash: str | None
) -> ExportMatch:
    """Whether ``rules`` give ``importer_name`` at ``importer_hash`` (None: none yet) the item:
    ``allowed``; ``other-hash`` when a rule names the session but pins another hash; else
    ``not-exported``."""
    pinned_elsewhere = False
    for rule in rules:
        if rule.session == importer_name:
            if rule.session_hash is None or same_hash(importer_hash, rule.session_hash):
                return "allowed"
            pinned_elsewhere = True
        elif rule.namespace is not None and in_namespace(importer_name, rule.namespace):
            return "allowed"
    return "other-hash" if pinned_elsewhere else "not-exported"


def check_exports_claimed(
    exporter: Session, existing: AbstractSet[str], text: str | None = None
) -> None:
    """Refuse ``exporter`` if an unpinned export names a session or namespace not in ``existing``.

    An unpinned ``session:`` export goes to whoever creates that session, and a ``namespace:``
    export to whoever the namespace session's ``create_sessions`` rule admits; while that session
    does not exist, any identity can create it and take the secret. ``existing`` holds the names
    in :func:`unpinned_export_targets` that exist now. Raises :class:`SessionError` with one
    problem per such export, naming both fixes (create the importer first, or pin its hash);
    when ``text`` is the session's YAML, each problem points at the export's line in it.
    """
    problems: list[Problem] = []
    for secret in exporter.secrets:
        for rule in secret.export:
            target = unpinned_target(exporter.name, rule)
            if target is None or target in existing:
                continue
            problems.append(_unclaimed_export(exporter, secret.name, rule, target, text))
    if problems:
        raise SessionError(in_text_order(problems))


def _unclaimed_export(
    exporter: Session, secret: str, rule: ExportRule, target: str, text: str | None
) -> Problem:
    index = next(i for i, spec in enumerate(exporter.secrets) if spec.name == secret)
    if rule.session is not None:
        what = (
            f"secret {secret!r} is exported to session {target!r} without a session_hash pin, "
            f"and there is no session {target!r} yet: whoever creates it first would receive "
            f"the secret. Create the session {target!r} first and then store this one, or pin "
            f"the importer: add 'session_hash: <hash of {target}>' to this export "
            "('casctl session hash FILE' prints it)"
        )
    else:
        what = (
            f"secret {secret!r} is exported to the namespace {target!r}, and there is no "
            f"session {target!r} yet: whoever creates it first would decide who receives the "
            f"secret. Create the namespace session {target!r} first and then store this one, or "
            "export to each importing session pinned to its hash ('session' and 'session_hash')"
        )
    place = export_place(text, secret, rule) if text is not None else None
    if place is None:
        return Problem.about(f"secrets[{index}].export", what)
    key, line, column = place
    return Problem("", line, column, what, key)


# --- generation -----------------------------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class _DependencyFailed(Exception):
    """A secret this one needs could not be made; that secret's own problem says why."""


class _Generator:
    def __init__(
        self,
        session: Session,
        previous: Mapping[str, SecretValue],
        previous_session: Session | None,
        imported: Mapping[str, SecretValue],
        now: datetime,
    ) -> None:
        self._session = session
        self._specs = {spec.name: (index, spec) for index, spec in enumerate(session.secrets)}
        self._previous = previous
        self._previous_specs = (
            {spec.name: spec for spec in previous_session.secrets} if previous_session else {}
        )
        self._imported = imported
        self._now = now
        self._values: dict[str, SecretValue] = {}
        self._failed: set[str] = set()
        self._problems: list[Problem] = []
        self._issuers = {spec.issuer for spec in session.secrets if spec.kind == "x509-ca"}

    def run(self) -> dict[str, SecretValue]:
        for spec in self._session.secrets:
            try:
                self._resolve(spec.name)
            except _DependencyFailed:
                continue
        if self._problems:
            raise SessionError(self._problems)
        return {
            spec.name: self._values[spec.name]
            for spec in self._session.secrets
            if spec.name in self._values
        }

    def _issuer_chain(self, spec: SecretSpec) -> str | None:
        """The chain of the issuer a given certificate names, or None without one."""
        return None if spec.issuer is None else self._resolve(spec.issuer).chain_pem

    def _resolve(self, name: str) -> SecretValue:
        """The value of the secret ``name``, made first if need be (issuers before what they
        sign; the model refuses issuer cycles)."""
        if name in self._values:
            return self._values[name]
        if name in self._failed:
            raise _DependencyFailed(name)
        index, spec = self._specs[name]
        try:
            value = self._make(spec)
        except _Refused as refused:
            path = f"secrets[{index}]" + (f".{refused.field}" if refused.field else "")
            self._problems.append(Problem.about(path, refused.message))
            self._failed.add(name)
            raise _DependencyFailed(name) from None
        except _DependencyFailed:
            self._failed.add(name)
            raise
        self._values[name] = value
        return value

    def _make(self, spec: SecretSpec) -> SecretValue:
        if spec.import_ is not None:
            return self._imported_value(spec)
        kind = spec.kind
        if kind is None:
            raise _Refused("kind", "a secret that is not imported needs a kind")
        if kind in ("ascii", "binary"):
            return self._data_value(spec, kind)
        if kind == "private-key":
            return self._key_value(spec)
        return self._certificate_value(spec, kind)

    def _previous_value(self, spec: SecretSpec) -> SecretValue | None:
        """The previous value of ``spec``'s secret, if the carry-over rules may consider it:
        same name and kind, and an explicit value in neither version (a value once written in
        the policy was visible to its readers, so it is not carried past its removal)."""
        before = self._previous_specs.get(spec.name)
        value = self._previous.get(spec.name)
        if (
            before is None
            or value is None
            or before.import_ is not None
            or before.kind != spec.kind
            or value.kind != spec.kind
            or before.value is not None
            or spec.value is not None
        ):
            return None
        return value

    def _imported_value(self, spec: SecretSpec) -> SecretValue:
        value = self._imported.get(spec.name)
        if value is None:
            raise _Refused("import", "the imported secret's value is not available")
        if spec.kind is not None and value.kind != spec.kind:
            raise _Refused(
                "kind", f"is declared as {spec.kind} and the imported secret is {value.kind}"
            )
        return value

    def _data_value(self, spec: SecretSpec, kind: SecretKind) -> SecretValue:
        if spec.value is not None:
            if kind == "ascii":
                return SecretValue(kind=kind, data=spec.value.encode("utf-8"))
            try:
                data = base64.b64decode(spec.value, validate=True)
            except (binascii.Error, ValueError):
                raise _Refused("value", "a binary value is written in standard base64") from None
            return SecretValue(kind=kind, data=data)
        size = spec.size
        if size is None:
            raise _Refused("size", f"a generated {kind} secret needs a size")
        before = self._previous_value(spec)
        if (
            before is not None
            and before.data is not None
            and len(before.data) == size
            and self._previous_specs[spec.name].size == size
        ):
            return before
        if kind == "ascii":
            text = "".join(secrets.choice(ASCII_ALPHABET) for _ in range(size))
            return SecretValue(kind=kind, data=text.encode("ascii"))
        return SecretValue(kind=kind, data=secrets.token_bytes(size))

    def _key_value(self, spec: SecretSpec) -> SecretValue:
        key_type = spec.key_type
        if key_type is None:
            raise _Refused("key_type", "a private-key secret needs a key type")
        if spec.value is not None:
            try:
                # Checked already, once, by the parser (a session is parsed before it is stored).
                key = load_private_key_pem(spec.value.encode("utf-8"), checked=False)
            except ValueError as exc:
                raise _Refused("value", str(exc)) from None
            actual = key_type_of(key)
            if actual != key_type:
                raise _Refused(
                    "key_type",
                    f"is {key_type} and the key given as value is {actual}; set key_type: {actual}",
                )
            return SecretValue(
                kind="private-key", private_key_pem=private_key_pem(key).decode("ascii")
            )
        before = self._previous_value(spec) if spec.migrate else None
        if before is not None:
            previous_type = key_type_of(before.private_key())
            if previous_type != key_type:
                raise _Refused(
                    "migrate",
                    f"keeps the previous key, which is {previous_type}, but key_type is "
                    f"{key_type}; keep key_type {previous_type}, or set migrate: false to "
                    "replace the key",
                )
            return before
        return SecretValue(
            kind="private-key",
            private_key_pem=private_key_pem(generate_private_key(key_type)).decode("ascii"),
        )

    def _certificate_value(self, spec: SecretSpec, kind: SecretKind) -> SecretValue:
        if spec.value is not None and spec.private_key is None:
            return _given_certificate(kind, spec.value, None, None, self._issuer_chain(spec))
        if spec.private_key is not None:
            named = self._resolve(spec.private_key)
            key_pem, key = _required(named.private_key_pem), named.private_key()
        elif spec.key_type is not None:
            key = generate_private_key(spec.key_type)
            key_pem = private_key_pem(key).decode("ascii")
        else:
            raise _Refused("key_type", "needs a key type when it names no private_key")
        if spec.value is not None:
            return _given_certificate(kind, spec.value, key, key_pem, self._issuer_chain(spec))
        issuer: SecretValue | None = None
        if spec.issuer is not None:
            issuer = self._resolve(spec.issuer)
        try:
            valid_for = (
                parse_valid_for(spec.valid_for)
                if spec.valid_for is not None
                else DEFAULT_VALIDITY[kind]
            )
            cert = issue_certificate(
                key,
                common_name=spec.common_name or spec.name[:MAX_COMMON_NAME],
                is_ca=kind == "x509-ca",
                # A CA that no CA of this session names as issuer signs only end entities.
                ca_path_length=None if spec.name in self._issuers else 0,
                now=self._now,
                valid_for=valid_for,
                issuer=issuer.issuer() if issuer else None,
                endpoint=spec.endpoint,
                san=spec.san,
            )
        except ValueError as exc:
            raise _Refused("issuer" if issuer else "", str(exc)) from None
        cert_pem = certificate_pem(cert).decode("ascii")
        chain = cert_pem + (_required(issuer.chain_pem) if issuer else "")
        return SecretValue(
            kind=kind, private_key_pem=key_pem, certificate_pem=cert_pem, chain_pem=chain
        )


def _given_certificate(
    kind: SecretKind,
    value: str,
    key: PrivateKey | None,
    key_pem: str | None,
    issuer_chain: str | None,
) -> SecretValue:
    """The value of a certificate given in the text, with its key if it names one; a value of
    one certificate with an ``issuer`` gets the issuer's chain after it."""
    try:
        certificates = load_certificate_chain_pem(value.encode("utf-8"))
    except ValueError as exc:
        raise _Refused("value", str(exc)) from None
    cert = certificates[0]
    try:
        certified = certificate_key_hash(cert)
    except ValueError:
        certified = ""
    if key is not None and not hmac.compare_digest(
        certified.encode("ascii"), key_hash(key).encode("ascii")
    ):
        raise _Refused("value", "the certificate does not carry the key named by private_key")
    if kind == "x509-ca" and not is_ca_certificate(cert):
        raise _Refused("value", "an x509-ca value must be a CA certificate (BasicConstraints ca)")
    chain = "".join(certificate_pem(item).decode("ascii") for item in certificates)
    if issuer_chain is not None and len(certificates) == 1:
        chain += issuer_chain
    return SecretValue(
        kind=kind,
        private_key_pem=key_pem,
        certificate_pem=certificate_pem(cert).decode("ascii"),
        chain_pem=chain,
    )


# --- helpers --------------------------------------------------------------------------------------


def _render_data(kind: str, data: bytes, fmt: str | None) -> str:
    if fmt is None:
        return data.decode("utf-8") if kind == "ascii" else data.hex()
    if fmt == "hex":
        return data.hex()
    if fmt == "base64":
        return base64.b64encode(data).decode("ascii")
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _required(text: str | None) -> str:
    if text is None:
        raise ValueError("the value lacks a field of its kind")
    return text


def _kind(text: str) -> SecretKind:
    for kind in SECRET_KINDS:
        if kind == text:
            return kind
    raise ValueError(f"unknown secret kind {text!r}")


def _record_data(kind: str, encoded: str) -> bytes:
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the record's data is not standard base64") from None
    if not data:
        raise ValueError("the record's data is empty")
    if kind == "ascii":
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("the record's ascii data is not UTF-8 text") from None
    return data


def _check_record_certificates(
    key: PrivateKey | None, certificate_pem: str, chain_pem: str
) -> None:
    try:
        cert = load_certificate_pem(certificate_pem.encode("utf-8"))
        chain = load_certificate_chain_pem(chain_pem.encode("utf-8"))
    except ValueError as exc:
        raise ValueError(f"the record's certificates: {exc}") from None
    if chain[0] != cert:
        raise ValueError("the record's chain_pem does not start with its certificate")
    if key is None:
        return
    try:
        certified = certificate_key_hash(cert)
    except ValueError:
        certified = ""
    if certified != key_hash(key):
        raise ValueError("the record's certificate does not carry its private key")


def _importing_secret(importer: Session, spec: ImportSpec) -> tuple[int | None, str]:
    for index, secret in enumerate(importer.secrets):
        if secret.import_ is spec:
            return index, secret.name
    for index, secret in enumerate(importer.secrets):
        if secret.import_ == spec:
            return index, secret.name
    return None, spec.secret


def same_hash(actual: str | None, expected: str) -> bool:
    """Whether the hash ``actual`` (None: there is none) is ``expected``, in constant time."""
    if actual is None:
        return False
    return hmac.compare_digest(actual.encode("utf-8"), expected.encode("utf-8"))


def in_namespace(name: str, namespace: str) -> bool:
    """Whether the session ``name`` is in ``namespace``: ``a/b`` holds ``a/b`` and ``a/b/c``."""
    return name == namespace or name.startswith(namespace + "/")


def _pins(exported: SecretSpec, importer_name: str) -> str:
    return ", ".join(
        rule.session_hash
        for rule in exported.export
        if rule.session == importer_name and rule.session_hash is not None
    )
