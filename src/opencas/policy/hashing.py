"""The session hash: what names a session version, pins it, and chains its updates.

``docs/session-hash.md`` defines it precisely and works through an example.
"""

from __future__ import annotations

from opencas.crypto.canonical import canonical_sha256
from opencas.policy.model import Session


def session_hash(session: Session) -> str:
    """Lowercase hex SHA-256 over the RFC 8785 canonical JSON of ``session.normal_form()``.

    Two texts that mean the same session (other key order, synonyms, legacy spellings, defaults
    left out or spelled out) hash the same; any change of meaning changes the hash.
    """
    return canonical_sha256(session.normal_form())
