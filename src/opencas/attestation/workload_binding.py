"""The workload binding: which service a workload attests as, and what its evidence binds.

A workload names the service it wants to be by its config id ``SESSION/SERVICE``
(:class:`ConfigId`). Its evidence carries, as its 64 bytes of report data, the SHA-512 over the
canonical JSON of ``{"config_id", "nonce", "public_key"}`` (:func:`workload_report_data`): the
config id, the CAS's single-use nonce and the workload's public key as the base64 text it sends.
The workload computes it to obtain evidence, the CAS to check that the evidence is about this
very request; both use this module, so the two sides cannot drift apart (DESIGN.md §8). A
successful attestation's answer also carries the nonce for the workload's next attestation in
the header :data:`NEXT_NONCE_HEADER`, so a workload that attests again needs one request.
"""

from __future__ import annotations

from dataclasses import dataclass

from opencas.crypto.canonical import canonical_sha512
from opencas.policy.model import check_service_name, check_session_name

#: How a config id is written, for messages and help texts.
CONFIG_ID_SHAPE = "SESSION/SERVICE"
#: The response header of ``POST /v1/enclave/attest`` that hands out the next nonce.
NEXT_NONCE_HEADER = "CAS-Next-Nonce"


@dataclass(frozen=True)
class ConfigId:
    """A config id: the ``session`` and the ``service`` in it, both valid names.

    Names follow the session language (:func:`~opencas.policy.model.check_session_name` and
    :func:`~opencas.policy.model.check_service_name`); constructing one with an invalid name
    raises ``ValueError``. ``str()`` gives the text ``SESSION/SERVICE``.
    """

    session: str
    service: str

    def __post_init__(self) -> None:
        """Refuse invalid names (``ValueError`` with what is wrong)."""
        try:
            check_session_name(self.session)
            check_service_name(self.service)
        except ValueError as exc:
            raise ValueError(f"expected {CONFIG_ID_SHAPE}: {exc}") from None

    @classmethod
    def parse(cls, text: str) -> ConfigId:
        """Read ``SESSION/SERVICE``; the last ``/`` separates the two, since session names may
        hold ``/`` and service names may not (``team/app/web`` is service ``web`` of session
        ``team/app``).

        Raises ``ValueError`` saying what is wrong: no ``/`` at all, or an invalid name.
        """
        session, separator, service = text.rpartition("/")
        if not separator:
            raise ValueError(f"expected {CONFIG_ID_SHAPE}, got {text!r} (no '/')")
        return cls(session, service)

    def __str__(self) -> str:
        return f"{self.session}/{self.service}"


def workload_report_data(config_id: ConfigId, nonce: str, public_key: str) -> bytes:
    """The 64 bytes a workload's evidence must bind for this attestation request.

    SHA-512 over the canonical JSON (RFC 8785) of ``{"config_id": str(config_id), "nonce":
    nonce, "public_key": public_key}``, where ``public_key`` is the base64 text exactly as sent.
    """
    binding = {"config_id": str(config_id), "nonce": nonce, "public_key": public_key}
    return canonical_sha512(binding)
