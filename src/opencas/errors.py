"""The error tree of OpenCAS.

Every error the project raises on purpose is a :class:`CasError`. Each carries a ``code`` (a short,
stable, kebab-case identifier used in API responses and in tests), a message a person can act on,
and the HTTP status the API answers with. The tree is deliberately shallow: callers branch on the
class for broad handling and on ``code`` for precise handling.
"""

from __future__ import annotations


class CasError(Exception):
    """Base of every deliberate OpenCAS error."""

    code: str = "error"
    http_status: int = 500

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


class ConfigError(CasError):
    """A configuration file (or value) is invalid; the message names the file, key and line."""

    code = "invalid-config"
    http_status = 400


class StoreError(CasError):
    """The state store cannot be opened, is in use, or is not an OpenCAS database."""

    code = "store-error"
    http_status = 500


class RecordDamagedError(StoreError):
    """A stored record failed authentication: its bytes changed or it was moved to another key."""

    code = "record-damaged"

    def __init__(self, table: str, key: str, detail: str = "") -> None:
        self.table = table
        self.key = key
        why = f": {detail}" if detail else ""
        super().__init__(
            f"stored record {table}/{key} is damaged or was tampered with "
            f"(it does not decrypt under its own table, key and version){why}"
        )


class KeyStoreError(CasError):
    """The sealed database-key store is missing, corrupt or cannot be unsealed on this platform."""

    code = "key-store-error"


class PlatformError(CasError):
    """The trusted execution environment cannot produce evidence or seal data."""

    code = "platform-error"


class EvidenceError(CasError):
    """Attestation evidence is malformed or does not verify.

    ``check`` names the verification step that failed: ``format`` (the evidence is not of its
    type's shape), ``type`` (no verifier for its type), ``signature`` (it does not verify),
    ``debug`` (it contradicts what its type implies), ``collateral`` (what it must be checked
    against is not available).
    """

    code = "invalid-evidence"
    http_status = 400

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


class RequestProofError(CasError):
    """A signed request's proof (``Authorization: CAS-Proof``) is invalid; ``code`` says why."""

    code = "invalid-proof"
    http_status = 401


class ClientError(CasError):
    """The client side (casctl, SDK) cannot do what it was asked: no such CAS, unreachable, ..."""

    code = "client-error"


class InvalidRequest(CasError):
    """The request is malformed in a way the API's own validation names."""

    code = "invalid-request"
    http_status = 400


class AuthenticationRequired(CasError):
    """The operation needs a signed request (``Authorization: CAS-Proof``), and there was none."""

    code = "signature-required"
    http_status = 401


class ForbiddenError(CasError):
    """The caller is known but not allowed to do this (wrong token, not the owner, ...)."""

    code = "forbidden"
    http_status = 403


class NotFoundError(CasError):
    """What the request names does not exist."""

    code = "not-found"
    http_status = 404


class ConflictError(CasError):
    """The operation conflicts with the current state (already provisioned, stale version, ...)."""

    code = "conflict"
    http_status = 409


class RateLimitedError(CasError):
    """Refused for now; ``retry_after`` says after how many seconds to try again."""

    code = "rate-limited"
    http_status = 429

    def __init__(self, message: str, *, retry_after: float, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after
