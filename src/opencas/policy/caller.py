"""Who makes a request: the key its request proof proved, or no one (an anonymous caller).

DESIGN.md §4: the caller's identity is the key hash of the key that signed the request's proof;
a request without a proof is anonymous, and may still do what ``ANY`` allows. ``api/`` builds a
:class:`Caller` from the verified proof, ``service/`` passes it on, and the access decisions of
:mod:`opencas.policy.access` and the owner check consume it. Whether an anonymous caller is
refused is decided in one place, :meth:`Caller.signer`.

Pure: nothing here verifies a proof; a :class:`Caller` states what a verified proof proved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from cryptography import x509

from opencas.errors import AuthenticationRequired


@dataclass(frozen=True, slots=True)
class Caller:
    """Who makes a request.

    ``key_hash`` is the key hash of the request-signing key, or ``None`` for an anonymous
    request; ``certificate`` is the identity certificate that carried that key (the proof's
    ``x5c``), or ``None`` when the proof named a bare key (``jwk``) or there was no proof.
    Access policies match a caller by its key alone; the certificate is kept so that the
    owner bound at provisioning is recorded with it.
    """

    key_hash: str | None = None
    certificate: x509.Certificate | None = None

    def __post_init__(self) -> None:
        if self.certificate is not None and self.key_hash is None:
            raise ValueError("an anonymous caller carries no certificate")

    @property
    def anonymous(self) -> bool:
        """True for a request that carried no proof of a key."""
        return self.key_hash is None

    def signer(self, operation: str) -> str:
        """The caller's key hash; :class:`AuthenticationRequired` (401) when it is anonymous.

        ``operation`` names, in the error's message, what needs the signed request
        (``"changing sessions"``).
        """
        if self.key_hash is None:
            raise AuthenticationRequired(
                f"{operation} needs a signed request (Authorization: CAS-Proof)"
            )
        return self.key_hash


ANONYMOUS: Final = Caller()
"""The caller of every request that carries no request proof."""
