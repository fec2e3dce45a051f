"""The error tree of OpenCAS.

Every error the project raises on purpose is a :class:`CasError`. Each carries a ``code`` (a short,
stable, kebab-case identifier used in API responses and in tests), a message a person can act on,
and the HTTP status the API answers with. The tree is deliberately shallow: callers branch on the
class for broad handling and on ``code`` for precise handling.

An error that has more to say than its message says it in its own JSON form and response headers
(:meth:`CasError.to_json`, :meth:`CasError.headers`), so that the API maps every error alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, ClassVar

from opencas.sources.problems import Problem, in_text, render_all


class CasError(Exception):
    """Base of every deliberate OpenCAS error."""

    code: str = "error"
    http_status: int = 500
    logged: ClassVar[bool] = False
    """Whether the API logs the error at ERROR when it answers a request with it: the CAS's own
    state is damaged, which its operator must hear of."""

    def __init_subclass__(
        cls, *, code: str | None = None, http_status: int | None = None, **kwargs: Any
    ) -> None:
        """Let a subclass name its code and status where it is declared.

        ``class NotFoundError(CasError, code="not-found", http_status=404)``; what it leaves out
        it inherits.
        """
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code
        if http_status is not None:
            cls.http_status = http_status

    def __init__(
        self, message: str, *, code: str | None = None, details: dict[str, object] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        if code is not None:
            self.code = code

    def to_json(self) -> dict[str, object]:
        """The API's error body: ``{"error": code, "message": text}`` plus any details."""
        return {**self.details, "error": self.code, "message": self.message}

    def headers(self) -> dict[str, str]:
        """The response headers the API's error answer carries besides its body; none here."""
        return {}


class ProblemsError(CasError):
    """A text or a request is invalid; ``problems`` lists each thing wrong with it.

    ``str()`` shows one problem per line, as ``PATH:LINE:COLUMN: KEY: MESSAGE``; the JSON form
    adds ``problems``, a list of ``{path, key, line, column, message}``. A plain string becomes
    a single problem with nothing but its message. ``source`` names the text in the problems
    that do not name one themselves.
    """

    nothing_found: ClassVar[str] = "the input is invalid"
    """The one problem of an error made with none."""
    default_source: ClassVar[str] = ""
    """How the problems name their text when neither they nor the error's maker say."""

    def __init__(
        self,
        problems: Problem | str | Iterable[Problem],
        *,
        source: str | None = None,
        code: str | None = None,
    ) -> None:
        if isinstance(problems, str):
            items: tuple[Problem, ...] = (Problem("", None, None, problems),)
        elif isinstance(problems, Problem):
            items = (problems,)
        else:
            items = tuple(problems)
        if not items:
            items = (Problem("", None, None, self.nothing_found),)
        self.source = self.default_source if source is None else source
        self.problems = in_text(items, self.source)
        super().__init__(render_all(self.problems), code=code)

    def to_json(self) -> dict[str, object]:
        """The API's error body, with ``problems``."""
        return {**super().to_json(), "problems": [item.to_json() for item in self.problems]}


class ConfigError(ProblemsError, code="invalid-config", http_status=400):
    """A configuration file (or value) is invalid; each problem names the file, key and line."""

    nothing_found = "the configuration is invalid"


class StoreError(CasError, code="store-error", http_status=500):
    """The state store cannot be opened, is in use, or is not an OpenCAS database."""


class DatabaseUnavailable(StoreError, code="database-unavailable", http_status=503):
    """The database cannot be reached now (down, restarting, the network cut); retry later."""


class LeaseLost(StoreError, code="lease-lost", http_status=409):
    """Work that runs on one instance at a time tried to commit without holding its lease."""


class DatabaseKeyStale(StoreError, code="database-key-stale", http_status=503):
    """The commit state does not open under this instance's database key: another instance
    rolled the key over and this one has not received the new key yet (it asks for it by
    itself; retry), or the state was damaged."""


class RecordDamagedError(StoreError, code="record-damaged"):
    """A stored record failed authentication: its bytes changed or it was moved to another key."""

    logged = True

    def __init__(self, table: str, key: str, detail: str = "") -> None:
        self.table = table
        self.key = key
        why = f": {detail}" if detail else ""
        super().__init__(
            f"stored record {table}/{key} is damaged or was tampered with "
            f"(it does not decrypt under its own table, key and version){why}"
        )


class KeyStoreError(CasError, code="key-store-error"):
    """The sealed database-key store is missing, corrupt or cannot be unsealed on this platform."""


class RecoveryError(CasError, code="recovery-error"):
    """A CAS cannot be recovered from the shares given: too few, mixed, or not this database's."""


class PlatformError(CasError, code="platform-error"):
    """The trusted execution environment cannot produce evidence or seal data."""


class EvidenceError(CasError, code="invalid-evidence", http_status=400):
    """Attestation evidence is malformed or does not verify.

    ``check`` names the verification step that failed: ``format`` (the evidence is not of its
    type's shape), ``type`` (no verifier for its type), ``signature`` (it does not verify),
    ``debug`` (it contradicts what its type implies), ``collateral`` (what it must be checked
    against is not available, or not valid), ``chain`` (a certificate that vouches for it does
    not lead to a pinned root, or is not valid at the verification time), ``tcb`` (the platform
    state it reports is not the one its certificate vouches for, or Intel's TCB info has no
    level for it or revokes it).
    """

    def __init__(self, message: str, *, check: str = "format") -> None:
        super().__init__(message)
        self.check = check


class AttestationRefused(CasError):
    """Evidence verified, but what it proves is not what the verifier was told to accept.

    ``check`` names the check that failed (``debug-mode``, ``measurement``, ``nonce``, ...).
    """

    code = "attestation-refused"
    http_status = 403

    def __init__(self, check: str, message: str) -> None:
        super().__init__(message)
        self.check = check

    def to_json(self) -> dict[str, object]:
        """The API's error body, with ``check``."""
        return {**super().to_json(), "check": self.check}


class RequestProofError(CasError, code="invalid-proof", http_status=401):
    """A signed request's proof (``Authorization: CAS-Proof``) is invalid; ``code`` says why."""


class ClientError(CasError, code="client-error"):
    """The client side (casctl, SDK) cannot do what it was asked: no such CAS, unreachable, ..."""


class InvalidRequest(ProblemsError, code="invalid-request", http_status=400):
    """The request is malformed in a way the API's own validation names."""

    nothing_found = "invalid request"


class AuthenticationRequired(CasError, code="signature-required", http_status=401):
    """The operation needs a signed request (``Authorization: CAS-Proof``), and there was none."""


class ForbiddenError(CasError, code="forbidden", http_status=403):
    """The caller is known but not allowed to do this (wrong token, not the owner, ...)."""


class NotFoundError(CasError, code="not-found", http_status=404):
    """What the request names does not exist."""


class ConflictError(CasError, code="conflict", http_status=409):
    """The operation conflicts with the current state (already provisioned, stale version, ...)."""


class LimitExceededError(CasError, code="limit-exceeded", http_status=413):
    """More than a configured limit allows; ``limit`` names the ``[limits]`` setting."""

    def __init__(self, message: str, *, limit: str, allowed: int, found: int) -> None:
        super().__init__(
            f"{message}; the availability config's [limits] {limit} raises the limit",
            details={"limit": limit, "allowed": allowed, "found": found},
        )
        self.limit = limit


class RateLimitedError(CasError, code="rate-limited", http_status=429):
    """Refused for now; ``retry_after`` says after how many seconds to try again."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float,
        code: str | None = None,
        details: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message, code=code, details=details)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        """``Retry-After``: whole seconds, at least 1 (the header takes no fractions)."""
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class AuditLogError(CasError, code="audit-log-unavailable", http_status=503):
    """The audit log cannot take an entry, so the operation it would record did not happen."""
