"""The audit log's chain: entries, their canonical form, hash and signature, and the verdict.

Pure: no files, no network, no clock (times are parameters). The writer
(:mod:`opencas.audit.log`) builds entries with :func:`next_entry`; the verifier
(:mod:`opencas.audit.verify`) checks each line with :func:`check_line` and feeds what it found,
in file order, to a :class:`ChainJudge`, which classifies the log into SCONE's exit codes
(:class:`Outcome`).

An entry is one line: the RFC 8785 canonical JSON of ``{seq, time, event, actor, subject,
details, prev, prev_failed, sig}``. ``sig`` is the Ed25519 signature (base64url, unpadded) of
the audit key over :data:`SIGNING_CONTEXT` followed by the canonical JSON of the entry without
``sig``; it is ``null`` in an unsigned log. The hash of an entry is the SHA-256 of its line, and
``prev`` names the hash of the entry before it (64 zeros for the first). ``seq`` is one more than
the previous entry's, except after an entry whose operation then failed: the next entry says so
(``prev_failed: true``) and takes the failed entry's ``seq`` (SCONE's rule).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import IntEnum
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from pydantic import ValidationError

from opencas.attestation.evidence import Evidence
from opencas.attestation.report import AUDIT_GENESIS_HEAD, CasReport, report_data
from opencas.attestation.verify import verify_evidence
from opencas.crypto.canonical import canonical_json, member_mismatch, strict_json_object
from opencas.crypto.encoding import b64url_decode_strict, b64url_encode
from opencas.crypto.pem import CERTIFICATE_ERRORS, load_certificate_pem
from opencas.crypto.x509 import certificate_key_hash, verify_issued_by
from opencas.errors import CasError

#: What the audit key signs before the canonical entry, so an entry signature means nothing else.
SIGNING_CONTEXT = b"opencas-audit-entry/v1\x00"
#: The longest line accepted: a ``cas_started`` entry carries certificates, report and evidence.
MAX_LINE_BYTES = 512 * 1024
MAX_SEQ = 2**53 - 1
GENESIS_HASH = AUDIT_GENESIS_HEAD

START_EVENT = "cas_started"
MODE_EVENT = "audit_log_mode_changed"
#: The events a CAS writes. An entry naming another event is not from a CAS.
EVENTS = frozenset(
    {
        START_EVENT,
        "cas_stopped",
        "provisioned",
        "owner_config_updated",
        MODE_EVENT,
        "recovery_configured",
        "recovered",
        "key_rollover_started",
        "key_rollover_finished",
        "snapshot_written",
        "backup_registered",
        "backup_unregistered",
        "restored",
        "session_created",
        "session_updated",
        "session_read",
        "values_read",
        "workload_attested",
        "workload_refused",
        "volume_tag_updated",
        "instance_admitted",
        "instance_refused",
        "upgrade_registered",
        "upgrade_unregistered",
        "software_upgraded",
    }
)
#: Events of operations that change the CAS's state: their entry is written before the change
#: commits, and the database's audit head names the last one that committed.
STATE_EVENTS = frozenset(
    {
        "provisioned",
        "owner_config_updated",
        MODE_EVENT,
        "recovery_configured",
        "recovered",
        "key_rollover_started",
        "key_rollover_finished",
        "backup_registered",
        "backup_unregistered",
        "restored",
        "session_created",
        "session_updated",
        "volume_tag_updated",
        "upgrade_registered",
        "upgrade_unregistered",
    }
)
#: Entries signed in every mode: what ties a log to its CAS, and turning the log off or on.
ALWAYS_SIGNED = frozenset({START_EVENT, MODE_EVENT})

_ENTRY_KEYS = frozenset(
    {"seq", "time", "event", "actor", "subject", "details", "prev", "prev_failed", "sig"}
)
_START_KEYS = frozenset(
    {"cas_key_hash", "ca_certificate", "audit_certificate", "report", "evidence"}
)
_HASH = re.compile(r"[0-9a-f]{64}")
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_MAX_SUBJECT = 1024
_SIG_MEMBER = b',"sig":"'
_AFTER_SIG = b'","subject":'
_SEQ_BEFORE_SIG = re.compile(rb'"seq":(?:0|[1-9][0-9]{0,15})\Z')
# 64 bytes are 86 base64url characters; the last one carries 2 bits, so its low 4 bits are 0.
_SIGNATURE_CHARS = 86
_SIGNATURE_TEXT = re.compile(rb"[A-Za-z0-9_-]{85}[AQgw]")

SignatureCheck = Callable[[bytes, bytes], bool]
"""Whether a signature (raw bytes) over a message verifies under the audit key in force."""


def is_hash(text: object) -> bool:
    """True when ``text`` is 64 lowercase hex digits (an entry hash or a key hash)."""
    return isinstance(text, str) and bool(_HASH.fullmatch(text))


def is_actor(text: object) -> bool:
    """True for an actor an entry may name: a key hash, ``anonymous`` or ``cas``."""
    return text in ("anonymous", "cas") or is_hash(text)


@dataclass(frozen=True)
class Head:
    """Where a log ends: the ``seq`` and hash of its last entry (``seq`` 0: the empty log)."""

    seq: int
    hash: str


GENESIS = Head(0, GENESIS_HASH)


@dataclass(frozen=True)
class Entry:
    """One audit log entry (see the module docstring for what each member means)."""

    seq: int
    time: str
    event: str
    actor: str
    subject: str
    details: Mapping[str, Any]
    prev: str
    prev_failed: bool = False
    sig: str | None = None

    def body(self) -> dict[str, Any]:
        """The entry without its signature: what the signature covers."""
        return {
            "seq": self.seq,
            "time": self.time,
            "event": self.event,
            "actor": self.actor,
            "subject": self.subject,
            "details": dict(self.details),
            "prev": self.prev,
            "prev_failed": self.prev_failed,
        }

    def line(self) -> bytes:
        """The entry as the log stores it: canonical JSON, without the newline."""
        return canonical_json({**self.body(), "sig": self.sig})


def signing_input(body: Mapping[str, Any]) -> bytes:
    """The bytes the audit key signs for an entry whose members (without ``sig``) are ``body``."""
    return SIGNING_CONTEXT + canonical_json(dict(body))


def line_hash(line: bytes) -> str:
    """The hash of an entry: SHA-256 (lowercase hex) of its line without the newline."""
    return hashlib.sha256(line).hexdigest()


def next_entry(
    head: Head,
    *,
    time: str,
    event: str,
    actor: str,
    subject: str,
    details: Mapping[str, Any],
    prev_failed: bool = False,
    sign: Callable[[bytes], bytes] | None = None,
) -> tuple[Entry, bytes, Head]:
    """The entry that follows ``head``, its line, and the head after it.

    ``prev_failed`` says that the operation of the entry at ``head`` failed; the new entry then
    takes its ``seq``. ``sign`` (the audit key's signing function) signs the entry; without it the
    entry is unsigned. Raises ``ValueError`` for an event, actor, time or subject an entry cannot
    hold, and for details without a canonical JSON form.
    """
    if event not in EVENTS:
        raise ValueError(f"unknown audit event {event!r}")
    if not is_actor(actor):
        raise ValueError(f"an audit actor is a key hash, 'anonymous' or 'cas', not {actor!r}")
    if not _TIME.fullmatch(time):
        raise ValueError(f"an audit time is RFC 3339 UTC to the second, not {time!r}")
    if len(subject) > _MAX_SUBJECT:
        raise ValueError(f"an audit subject has at most {_MAX_SUBJECT} characters")
    if prev_failed and head.seq < 1:
        raise ValueError("the empty log has no entry that could have failed")
    seq = head.seq if prev_failed else head.seq + 1
    if seq > MAX_SEQ:
        raise ValueError("the audit log is full: its sequence number would pass 2^53 - 1")
    entry = Entry(seq, time, event, actor, subject, dict(details), head.hash, prev_failed)
    body = canonical_json(entry.body())
    signature = None if sign is None else b64url_encode(sign(SIGNING_CONTEXT + body))
    entry = replace(entry, sig=signature)
    line = _with_signature(body, signature)
    if len(line) >= MAX_LINE_BYTES:
        raise ValueError(f"an audit entry has at most {MAX_LINE_BYTES} bytes")
    return entry, line, Head(seq, line_hash(line))


@dataclass(frozen=True)
class PendingEntry:
    """An entry waiting for its place in a chain that several writers share: everything but
    ``seq`` and ``prev``, which only the head it is appended to decides.

    ``details`` is the entry's details, or (a ``cas_started`` entry, whose report is bound to
    its place) a function that makes them from the hash the entry follows.
    """

    event: str
    actor: str
    subject: str
    details: Mapping[str, Any] | Callable[[str], Mapping[str, Any]]
    time: str
    signed: bool


@dataclass(frozen=True)
class ChainedBatch:
    """Entries chained onto a head: each one's line and the head after it, in chain order."""

    lines: list[bytes]
    heads: list[Head]

    @property
    def head(self) -> Head | None:
        """The head after the last entry; None for an empty batch."""
        return self.heads[-1] if self.heads else None


def chain_batch(
    head: Head,
    pending: Sequence[PendingEntry],
    *,
    sign: Callable[[bytes], bytes],
    prev_failed: bool = False,
) -> ChainedBatch:
    """Chain ``pending`` onto ``head``, in order: the first entry follows ``head`` (and says
    ``prev_failed`` when the operation of the entry at ``head`` failed), each next one the entry
    before it. Entries marked ``signed`` are signed with ``sign``.

    Raises ``ValueError`` as :func:`next_entry` does; then nothing of the batch counts.
    """
    lines: list[bytes] = []
    heads: list[Head] = []
    for number, item in enumerate(pending):
        details = item.details(head.hash) if callable(item.details) else item.details
        _, line, head = next_entry(
            head,
            time=item.time,
            event=item.event,
            actor=item.actor,
            subject=item.subject,
            details=details,
            prev_failed=prev_failed and number == 0,
            sign=sign if item.signed or item.event in ALWAYS_SIGNED else None,
        )
        lines.append(line)
        heads.append(head)
    return ChainedBatch(lines, heads)


def _with_signature(body: bytes, signature: str | None) -> bytes:
    """The line of the entry whose canonical body (without ``sig``) is ``body``.

    Serialising the entry once and inserting ``sig`` where canonical order puts it (right
    before ``subject``) costs half of serialising it twice. The last ``,"subject":`` is the
    entry's own: only the string ``time`` follows it, and a string holds no unescaped quote.
    """
    at = body.rfind(b',"subject":')
    member = b',"sig":null' if signature is None else b',"sig":"' + signature.encode() + b'"'
    return body[:at] + member + body[at:]


# --- reading and checking one line --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LineFacts:
    """What one checked line says about the chain: enough to judge it without the line."""

    seq: int
    prev: str
    hash: str
    prev_failed: bool
    event: str
    signed: bool


def parse_entry(line: bytes) -> Entry:
    """The entry on ``line`` (without its newline), checked for shape and canonical form.

    Raises ``ValueError`` saying what is wrong; the signature is not checked here.
    """
    if len(line) >= MAX_LINE_BYTES:
        raise ValueError(f"the line is longer than {MAX_LINE_BYTES} bytes")
    document = strict_json_object(line, "audit entry")
    _check_members(document)
    if canonical_json(document) != line:
        raise ValueError("the line is not the canonical JSON of its entry (it was edited)")
    return Entry(**document)


def _check_members(document: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` unless ``document`` has an entry's members, each of its type."""
    mismatch = member_mismatch(document, _ENTRY_KEYS)
    if mismatch is not None:
        raise ValueError(f"the entry has the wrong members ({mismatch})")
    seq, prev, sig = document["seq"], document["prev"], document["sig"]
    if type(seq) is not int or not 1 <= seq <= MAX_SEQ:
        raise ValueError("seq must be an integer from 1 to 2^53 - 1")
    if not isinstance(document["time"], str) or not _TIME.fullmatch(document["time"]):
        raise ValueError("time must be RFC 3339 UTC to the second")
    if document["event"] not in EVENTS:
        raise ValueError(f"event {str(document['event'])[:40]!r} is not an audit event")
    if not is_actor(document["actor"]):
        raise ValueError("actor must be a key hash, 'anonymous' or 'cas'")
    if not isinstance(document["subject"], str) or len(document["subject"]) > _MAX_SUBJECT:
        raise ValueError(f"subject must be a string of at most {_MAX_SUBJECT} characters")
    if not isinstance(document["details"], dict):
        raise ValueError("details must be an object")
    if not is_hash(prev):
        raise ValueError("prev must be 64 lowercase hex digits")
    if not isinstance(document["prev_failed"], bool):
        raise ValueError("prev_failed must be true or false")
    if sig is not None and not isinstance(sig, str):
        raise ValueError("sig must be a string or null")


def audit_key_check(raw_key: bytes) -> SignatureCheck:
    """The signature check of the Ed25519 audit key whose raw 32 bytes are ``raw_key``.

    libsodium verifies about twice as fast as OpenSSL's Ed25519 here, and verifying every
    signature is what a long log's verification costs (benchmarks/audit_verify.py).
    """
    key = VerifyKey(raw_key)

    def check(signature: bytes, message: bytes) -> bool:
        try:
            key.verify(message, signature)
        except BadSignatureError:
            return False
        return True

    return check


class KeyRing:
    """The audit keys in force at a place in a log: each one a ``cas_started`` entry up to
    there named (several instances of one CAS each sign with a key of their own).

    :meth:`check` tries the key that verified the last signature first: one instance's entries
    come in runs, so a log of one instance costs one verification per entry, as before.
    """

    def __init__(self) -> None:
        self._raw: list[bytes] = []
        self._checks: list[SignatureCheck] = []
        self._last = 0

    def __len__(self) -> int:
        return len(self._raw)

    def add(self, raw_key: bytes) -> None:
        """Put the Ed25519 key whose raw 32 bytes are ``raw_key`` in force (again)."""
        if raw_key in self._raw:
            return
        self._raw.append(raw_key)
        self._checks.append(audit_key_check(raw_key))

    def check(self, signature: bytes, message: bytes) -> bool:
        """Whether ``signature`` over ``message`` verifies under one of the keys in force."""
        checks = self._checks
        last = self._last
        if checks[last](signature, message):
            return True
        for index, check in enumerate(checks):
            if index != last and check(signature, message):
                self._last = index
                return True
        return False


def check_line(line: bytes, check: SignatureCheck | None) -> LineFacts:
    """Check ``line``'s form and its signature with the audit key ``check`` in force there.

    With ``check`` ``None`` (no ``cas_started`` entry names a key) signatures are not checked:
    the caller must say that the log cannot be tied to a CAS. Raises ``ValueError`` when the
    line is not an entry, its signature does not verify, or an entry that must be signed is not.

    A signed line is not serialised again: the signature covers the line with its ``sig``
    member cut out, so once it verifies, that text is the canonical body the CAS signed, and
    the line is canonical when ``sig`` stands where canonical order puts it (between ``seq``
    and ``subject``), spelled canonically.
    """
    if len(line) >= MAX_LINE_BYTES:
        raise ValueError(f"the line is longer than {MAX_LINE_BYTES} bytes")
    cut = _cut_signature(line) if check is not None else None
    if cut is None:
        return _checked_slowly(line, check)
    body, signature = cut
    assert check is not None
    if not check(signature, SIGNING_CONTEXT + body):
        raise ValueError("its signature does not verify under the audit key")
    try:
        document = json.loads(line)
    except ValueError as exc:  # the key signed a body that is not JSON: not a CAS's key
        raise ValueError(f"the audit entry is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ValueError("the audit entry must be a JSON object")
    _check_members(document)
    return LineFacts(
        document["seq"],
        document["prev"],
        line_hash(line),
        document["prev_failed"],
        document["event"],
        True,
    )


def _checked_slowly(line: bytes, check: SignatureCheck | None) -> LineFacts:
    """:func:`check_line` for an unsigned line, one checked without a key, or one whose ``sig``
    is not where a canonical line has it (then :func:`parse_entry` says what is wrong)."""
    entry = parse_entry(line)
    if entry.sig is None:
        if entry.event in ALWAYS_SIGNED:
            raise ValueError(f"a {entry.event} entry must be signed")
    elif check is not None:
        signature = b64url_decode_strict(entry.sig, "signature")
        if not check(signature, signing_input(entry.body())):
            raise ValueError("its signature does not verify under the audit key")
    signed = entry.sig is not None
    return LineFacts(entry.seq, entry.prev, line_hash(line), entry.prev_failed, entry.event, signed)


def _cut_signature(line: bytes) -> tuple[bytes, bytes] | None:
    """The line without its ``sig`` member, and the signature; None unless ``sig`` is a
    canonical Ed25519 signature between ``seq`` and ``subject``.

    The last ``,"sig":"`` is the entry's own: only the strings ``subject`` and ``time`` follow
    it, and a string cannot hold an unescaped quote.
    """
    at = line.rfind(_SIG_MEMBER)
    if at < 0:
        return None
    begin = at + len(_SIG_MEMBER)
    end = begin + _SIGNATURE_CHARS
    if not line.startswith(_AFTER_SIG, end) or not _SEQ_BEFORE_SIG.search(line, 0, at):
        return None
    text = line[begin:end]
    if not _SIGNATURE_TEXT.fullmatch(text):
        return None
    return line[:at] + line[end + 1 :], base64.urlsafe_b64decode(text + b"==")


# --- the start entry: tying the log to an attested CAS -------------------------------------------


@dataclass(frozen=True)
class StartClaims:
    """What a ``cas_started`` entry proves once checked: whose log it is, and its signing key."""

    cas_key_hash: str
    audit_key: Ed25519PublicKey
    report: CasReport


def start_details(
    *,
    cas_key_hash: str,
    ca_certificate_pem: str,
    audit_certificate_pem: str,
    report: Mapping[str, Any],
    evidence: Mapping[str, Any],
) -> dict[str, Any]:
    """The details of a ``cas_started`` entry."""
    return {
        "cas_key_hash": cas_key_hash,
        "ca_certificate": ca_certificate_pem,
        "audit_certificate": audit_certificate_pem,
        "report": dict(report),
        "evidence": dict(evidence),
    }


def check_start(entry: Entry) -> StartClaims:
    """Check that a ``cas_started`` entry ties the log to an attested CAS, and name its key.

    The CA certificate must carry the CAS key that ``cas_key_hash`` names, the audit certificate
    must be issued by it for an Ed25519 key, the report must name that CAS key and be bound to
    the log's position (its nonce is the entry's ``prev``), and the evidence must verify (as of
    the report's time) and bind the report. Raises ``ValueError`` saying which does not hold.
    """
    details = entry.details
    mismatch = member_mismatch(details, _START_KEYS)
    if mismatch is not None:
        raise ValueError(f"its details have the wrong members ({mismatch})")
    cas_key_hash = details["cas_key_hash"]
    if not is_hash(cas_key_hash):
        raise ValueError("cas_key_hash must be 64 lowercase hex digits")
    try:
        ca = load_certificate_pem(str(details["ca_certificate"]).encode("ascii"))
        audit = load_certificate_pem(str(details["audit_certificate"]).encode("ascii"))
    except (*CERTIFICATE_ERRORS, UnicodeEncodeError) as exc:
        raise ValueError(f"a certificate it carries does not load ({exc})") from exc
    if certificate_key_hash(ca) != cas_key_hash:
        raise ValueError("its CA certificate does not carry the CAS key it names")
    try:
        verify_issued_by(audit, ca)
    except ValueError as exc:
        raise ValueError(f"its audit certificate is not issued by the CAS key ({exc})") from exc
    audit_key = audit.public_key()
    if not isinstance(audit_key, Ed25519PublicKey):
        raise ValueError("its audit certificate does not carry an Ed25519 key")
    report = _check_report(details, cas_key_hash, entry.prev)
    return StartClaims(cas_key_hash, audit_key, report)


def _check_report(details: Mapping[str, Any], cas_key_hash: str, prev: str) -> CasReport:
    try:
        report = CasReport.model_validate(details["report"])
    except ValidationError as exc:
        raise ValueError(f"its report is not a CAS report ({exc.error_count()} problems)") from exc
    if report.cas_key_hash != cas_key_hash:
        raise ValueError("its report names another CAS key")
    if report.nonce != prev:
        raise ValueError("its report is not bound to this place in the log (nonce is not prev)")
    try:
        evidence = Evidence.from_json(details["evidence"])
        verified = verify_evidence(evidence, at=datetime.fromisoformat(report.time))
    except CasError as exc:
        raise ValueError(f"its evidence does not verify: {exc.message}") from exc
    if not hmac.compare_digest(verified.report_data, report_data(report)):
        raise ValueError("its evidence does not bind its report")
    return report


# --- the verdict ------------------------------------------------------------------------------


class Outcome(IntEnum):
    """The verdict on a log, as ``casctl audit verify`` exits (SCONE's codes)."""

    INTACT = 0
    ONE_FAILED = 10
    TRUNCATED_RECENT = 14
    TRUNCATED_OLDER = 15
    ROLLBACK_POSSIBLE = 16
    ROLLBACK_OR_MISSING = 17
    ROLLBACK = 18
    FOREIGN = 19
    INTEGRITY = 20


# Worst first: the verdict is the worst finding.
_SEVERITY = (
    Outcome.INTEGRITY,
    Outcome.FOREIGN,
    Outcome.ROLLBACK,
    Outcome.ROLLBACK_OR_MISSING,
    Outcome.TRUNCATED_OLDER,
    Outcome.TRUNCATED_RECENT,
    Outcome.ROLLBACK_POSSIBLE,
    Outcome.ONE_FAILED,
    Outcome.INTACT,
)


@dataclass(frozen=True)
class Finding:
    """One thing wrong (or worth saying) about a log; ``line`` is 1-based, when there is one."""

    outcome: Outcome
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return where + self.message


@dataclass(frozen=True)
class Expectations:
    """What the verifier was told to expect of the log.

    ``cas_key_hash``: the CAS whose log it must be. ``predecessor``: the hash of the entry just
    before the first one (for a log fetched from a later ``seq``). ``last``: the hash of the
    entry it must end with. ``head``, ``checkpoints``, ``seen_seq``: the CAS's current head,
    its committed checkpoints (``seq`` → hash) and the highest ``seq`` seen from it before
    (``--cas``).
    """

    cas_key_hash: str | None = None
    predecessor: str | None = None
    last: str | None = None
    head: Head | None = None
    checkpoints: Mapping[int, str] = field(default_factory=dict)
    seen_seq: int | None = None


@dataclass(frozen=True)
class Verdict:
    """The judgement on a log: its outcome, every finding, and what it holds."""

    outcome: Outcome
    findings: tuple[Finding, ...]
    entries: int
    signed: int
    starts: int
    failed: int
    first: Head | None
    last: Head | None

    @property
    def message(self) -> str:
        """The worst finding, or a summary of an intact log."""
        for finding in self.findings:
            if finding.outcome == self.outcome:
                return str(finding)
        return f"intact: {self.entries} entries, {self.signed} signed"


class ChainJudge:
    """Judges a log fed line by line, in file order, into a :class:`Verdict`.

    Feed each line's :class:`LineFacts` with :meth:`entry`, a line that did not check with
    :meth:`fault`, and each checked ``cas_started`` entry with :meth:`start` (or
    :meth:`foreign` when it does not tie the log to the expected CAS). Memory stays constant
    whatever the length of the log.
    """

    def __init__(self, expectations: Expectations) -> None:
        self._expect = expectations
        self._findings: list[Finding] = []
        self._previous: LineFacts | None = None
        self._first: LineFacts | None = None
        self._entries = self._signed = self._starts = self._failed = 0
        self._cas_key_hash = expectations.cas_key_hash
        self._at_checkpoint: dict[int, tuple[str, int]] = {}
        self._last_line = 0
        self._last_found_at: int | None = None

    def _find(self, outcome: Outcome, message: str, line: int | None = None) -> None:
        self._findings.append(Finding(outcome, message, line))

    def fault(self, line: int, message: str) -> None:
        """Line ``line`` is not an intact entry (``message`` says why)."""
        self._find(Outcome.INTEGRITY, message, line)
        self._previous = None  # the chain cannot be followed across it
        self._last_line = line

    def foreign(self, line: int | None, message: str) -> None:
        """The log (the ``cas_started`` entry on ``line``) is not tied to the expected CAS."""
        self._find(Outcome.FOREIGN, message, line)

    def start(self, line: int, claims: StartClaims) -> None:
        """A checked ``cas_started`` entry on ``line``: the log must stay that CAS's log."""
        if self._cas_key_hash is None:
            self._cas_key_hash = claims.cas_key_hash
        elif claims.cas_key_hash != self._cas_key_hash:
            self._find(
                Outcome.FOREIGN,
                f"the entry is from CAS {claims.cas_key_hash}, not from {self._cas_key_hash}",
                line,
            )

    def entry(self, line: int, facts: LineFacts) -> None:
        """Line ``line`` checked as an entry with ``facts``."""
        self._entries += 1
        self._signed += facts.signed
        self._starts += facts.event == START_EVENT
        self._last_line = line
        if facts.seq in self._expect.checkpoints:
            self._at_checkpoint[facts.seq] = (facts.hash, line)
        if self._expect.last is not None and facts.hash == self._expect.last:
            self._last_found_at = line
        previous = self._previous
        self._previous = facts
        if self._first is None:
            self._first = facts
            self._check_first(line, facts)
            return
        if previous is None:
            return  # after a damaged line, the next link cannot be judged
        self._check_link(line, previous, facts)

    def _check_first(self, line: int, facts: LineFacts) -> None:
        expected = self._expect.predecessor
        if expected is not None:
            if facts.prev != expected:
                self._find(
                    Outcome.TRUNCATED_OLDER,
                    f"the log does not start right after {expected}: its first entry (seq "
                    f"{facts.seq}) follows {facts.prev}",
                    line,
                )
        elif facts.seq != 1 or facts.prev != GENESIS_HASH:
            self._find(
                Outcome.TRUNCATED_OLDER,
                f"the log starts at seq {facts.seq}, not at the first entry: older entries are "
                "missing (give --predecessor for a log fetched from a later seq)",
                line,
            )
        if facts.prev_failed:
            self._failed += 1

    def _check_link(self, line: int, previous: LineFacts, facts: LineFacts) -> None:
        if facts.prev != previous.hash:
            if facts.seq <= previous.seq:
                self._find(
                    Outcome.ROLLBACK,
                    f"a second entry with seq {facts.seq} (or lower) that does not follow line "
                    f"{line - 1}: the log was rolled back and written again",
                    line,
                )
            elif facts.seq > previous.seq + 1:
                self._find(
                    Outcome.ROLLBACK_OR_MISSING,
                    f"entries are missing: seq jumps from {previous.seq} to {facts.seq}",
                    line,
                )
            else:
                self._find(
                    Outcome.INTEGRITY,
                    f"prev is not the hash of line {line - 1}: an entry was changed, removed "
                    "or inserted",
                    line,
                )
            return
        if facts.prev_failed:
            if facts.seq != previous.seq:
                self._find(
                    Outcome.INTEGRITY,
                    f"it follows a failed operation but does not take its seq {previous.seq}",
                    line,
                )
                return
            self._failed += 1
            self._find(
                Outcome.ONE_FAILED,
                f"the operation of seq {previous.seq} (line {line - 1}, {previous.event}) "
                "failed and was rolled back",
                line,
            )
        elif facts.seq != previous.seq + 1:
            self._find(
                Outcome.INTEGRITY,
                f"seq {facts.seq} does not follow seq {previous.seq}",
                line,
            )

    def verdict(self) -> Verdict:
        """The verdict on every line fed so far, against the expectations."""
        fed = list(self._findings)
        self._check_end()
        self._check_checkpoints()
        findings = sorted(self._findings, key=lambda found: _SEVERITY.index(found.outcome))
        self._findings = fed
        outcome = findings[0].outcome if findings else Outcome.INTACT
        first = Head(self._first.seq, self._first.hash) if self._first else None
        last = Head(self._previous.seq, self._previous.hash) if self._previous else None
        return Verdict(
            outcome,
            tuple(findings),
            self._entries,
            self._signed,
            self._starts,
            self._failed,
            first,
            last,
        )

    def _check_end(self) -> None:
        expect, last = self._expect, self._previous
        if self._entries == 0:
            self._find(Outcome.TRUNCATED_RECENT, "the log holds no entry")
            return
        if last is None:
            return  # the last line is damaged: that is the finding
        anchored = False
        if expect.last is not None:
            anchored = True
            if self._last_found_at is None:
                self._find(
                    Outcome.TRUNCATED_RECENT,
                    f"the entry {expect.last} (--last) is not in the log: recent entries are "
                    "missing",
                )
        if expect.head is not None:
            anchored = True
            self._check_head(expect.head, last)
        if (
            expect.seen_seq is not None
            and expect.head is not None
            and expect.head.seq < expect.seen_seq
        ):
            self._find(
                Outcome.ROLLBACK,
                f"the CAS's head is seq {expect.head.seq}, older than seq "
                f"{expect.seen_seq} seen from it before: the CAS was rolled back",
            )
        if not anchored:
            self._find(
                Outcome.ROLLBACK_POSSIBLE,
                f"the log is intact up to seq {last.seq}, but nothing says where it should end "
                "(give --last or --cas): a rollback cannot be ruled out",
            )

    def _check_head(self, head: Head, last: LineFacts) -> None:
        if last.seq < head.seq:
            self._find(
                Outcome.TRUNCATED_RECENT,
                f"the log ends at seq {last.seq}, but the CAS's head is seq {head.seq}: recent "
                "entries are missing",
            )
        elif last.seq > head.seq:
            self._find(
                Outcome.ROLLBACK,
                f"the log goes on to seq {last.seq}, past the CAS's head seq {head.seq}: the "
                "CAS's state is older than its log (rolled back)",
            )
        elif last.hash != head.hash:
            self._find(
                Outcome.ROLLBACK,
                f"the log's entry seq {last.seq} is not the CAS's head entry: the log was forked",
                self._last_line,
            )

    def _check_checkpoints(self) -> None:
        for seq, expected in sorted(self._expect.checkpoints.items()):
            found = self._at_checkpoint.get(seq)
            if found is not None and found[0] != expected:
                self._find(
                    Outcome.ROLLBACK,
                    f"the entry seq {seq} is not the one the CAS committed (checkpoint): the "
                    "log was rolled back and written again",
                    found[1],
                )
