"""An access policy naming a certificate the CAS generates ($$CAS::NAME$$) admits whoever holds
that certificate's key, as the session's values are when each request is decided."""

from __future__ import annotations

import pytest

from opencas.crypto.x509 import certificate_key_hash
from opencas.errors import ForbiddenError, NotFoundError
from opencas.policy.caller import Caller
from opencas.policy.model import SecretKeyRule
from opencas.service import sessions
from opencas.service.cas import Cas

AUTHOR = Caller("a1" * 32)
STRANGER = Caller("b2" * 32)


def policy(predecessor: str | None = None, *, migrate: bool = True) -> str:
    head = 'name: team\nversion: "0.3"\n'
    if predecessor is not None:
        head += f"predecessor: {predecessor}\n"
    return head + (
        "secrets:\n"
        "  - name: operator-key\n"
        "    kind: private-key\n"
        f"    migrate: {'true' if migrate else 'false'}\n"
        "  - name: operator\n"
        "    kind: x509\n"
        "    private_key: operator-key\n"
        "access_policy:\n"
        "  read: [CREATOR, '$$CAS::operator$$']\n"
        "  update: [CREATOR, '$$SCONE::operator:crt$$']\n"
        "  create_sessions: ['$$CAS::operator.crt$$']\n"
    )


def holder(cas: Cas) -> Caller:
    """The identity of whoever holds the certificate the CAS made for ``operator``."""
    value = sessions.load_secret_values(cas.store, "team")["operator"]
    return Caller(certificate_key_hash(value.certificate()))


def test_the_holder_of_a_generated_certificate_may_read_update_and_create(cas: Cas) -> None:
    created = sessions.create_session(cas, policy(), AUTHOR)
    stored = sessions.load_session(cas.store, "team")
    assert stored is not None
    assert stored.session.access_policy.read.rules[1] == SecretKeyRule(secret="operator")  # type: ignore[union-attr]
    operator = holder(cas)

    assert sessions.read_session(cas, "team", operator).hash == created.hash
    with pytest.raises(NotFoundError):
        sessions.read_session(cas, "team", STRANGER)

    updated = sessions.update_session(cas, "team", policy(created.hash), operator)
    # The key migrates, so the certificate issued anew has the same key: still the operator.
    assert holder(cas) == operator
    assert sessions.read_session(cas, "team", operator).hash == updated.hash

    child = 'name: team/job\nversion: "0.3"\n'
    sessions.create_session(cas, child, operator)
    with pytest.raises(ForbiddenError):
        sessions.create_session(cas, 'name: team/other\nversion: "0.3"\n', STRANGER)


def test_the_rule_follows_the_certificate_the_cas_holds_now(cas: Cas) -> None:
    created = sessions.create_session(cas, policy(migrate=False), AUTHOR)
    before = holder(cas)
    assert sessions.read_session(cas, "team", before).hash == created.hash

    # Without migrate, the update makes a new key: the old holder is no one here any more.
    sessions.update_session(cas, "team", policy(created.hash, migrate=False), AUTHOR)
    after = holder(cas)
    assert after != before
    sessions.read_session(cas, "team", after)
    with pytest.raises(NotFoundError):
        sessions.read_session(cas, "team", before)
