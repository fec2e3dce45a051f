"""What the evidence of a key handover request binds, shared by the CAS that checks a request
(:mod:`opencas.service.key_handover`) and a client that checks one before passing it on (the
owner's ``casctl register-backup``). Pure: no I/O."""

from __future__ import annotations

from opencas.crypto.canonical import canonical_sha512

REQUEST_FORMAT = "opencas-key-handover-request/v1"


def request_binding(purpose: str, request_id: str, public_key_b64: str) -> bytes:
    """The 64 bytes a request's evidence binds: SHA-512 of the canonical JSON of its fields."""
    return canonical_sha512(
        {
            "format": REQUEST_FORMAT,
            "purpose": purpose,
            "request_id": request_id,
            "public_key": public_key_b64,
        }
    )
