"""The workload exchange: from a fresh key to the opened configuration (DESIGN.md §8).

A workload makes a P-256 key pair, asks the enclave API for a nonce, obtains evidence that binds
its config id, that nonce and its public key (``workload_report_data`` of
:mod:`opencas.attestation.workload_binding`), posts it, and opens the configuration the CAS
sealed to its key. :class:`WorkloadExchange` holds the workload's side of these steps, with no
I/O; :func:`attest` (or :func:`attest_async`) sends the requests through an enclave client, and
:func:`fetch_configuration` does it all for one fresh key. ``casctl run`` and the workload
attestation benchmark both go through here.

An attestation through a client that attested before uses the nonce the CAS handed out with
that answer, so it is one request; when the CAS refuses that nonce (it restarted, its key was
rolled over), the attestation is made again with a nonce asked for.

Given ``retry_for`` seconds, an attestation the CAS could not be reached for, with no request
written (:attr:`~opencas.client.channel.CasUnreachable.retryable`: the CAS is starting, or it
reset the connection over ``max_connections_per_source``), is made again after a wait that
doubles from :data:`FIRST_RETRY_WAIT` to :data:`LONGEST_RETRY_WAIT`, each drawn between half
and all of it: a burst over a CAS's limits becomes a slower burst, not failures.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec

from opencas.attestation.evidence import Evidence
from opencas.attestation.workload_binding import ConfigId, workload_report_data
from opencas.backoff import backoff_delays, jittered
from opencas.client.channel import CasUnreachable
from opencas.client.enclave import (
    AsyncEnclaveClient,
    EnclaveClient,
    WorkloadConfig,
    open_config,
)
from opencas.crypto.encoding import b64_encode
from opencas.crypto.hpke_seal import SealedConfig
from opencas.crypto.keys import generate_ecdsa_key, public_key_der
from opencas.errors import AttestationRefused, ClientError
from opencas.platform.base import EvidenceProvider

#: The KEM of the workload's key: P-256, so that the CAS can also certify the key.
WORKLOAD_KEM = "P-256"
#: The check of a refusal for a nonce the CAS does not take (unknown, used, expired).
NONCE_CHECK = "nonce"
#: Seconds before the first try again of an attestation the CAS could not be reached for.
FIRST_RETRY_WAIT = 0.1
#: The longest wait between two tries.
LONGEST_RETRY_WAIT = 2.0


@dataclass(frozen=True)
class AttestedWorkload:
    """What an attested workload got: its configuration and the key it was sealed to.

    The key is the one the per-workload certificates in ``config`` certify.
    """

    config: WorkloadConfig
    key: ec.EllipticCurvePrivateKey = field(repr=False)


@dataclass(frozen=True)
class WorkloadExchange:
    """The workload's side of attesting as ``config_id`` with ``key``, without I/O.

    ``public_key`` is the key as sent: standard base64 of its DER SubjectPublicKeyInfo.
    """

    config_id: ConfigId
    key: ec.EllipticCurvePrivateKey = field(repr=False)
    public_key: str = field(init=False)

    def __post_init__(self) -> None:
        """Derive the public key text from the key."""
        object.__setattr__(self, "public_key", b64_encode(public_key_der(self.key.public_key())))

    @classmethod
    def new(cls, config_id: ConfigId) -> WorkloadExchange:
        """An exchange for ``config_id`` with a fresh P-256 key pair."""
        return cls(config_id, generate_ecdsa_key("P-256"))

    def evidence(self, nonce: str, provider: EvidenceProvider) -> Evidence:
        """Evidence from ``provider`` that binds this config id, ``nonce`` and public key."""
        return provider.evidence(workload_report_data(self.config_id, nonce, self.public_key))

    def open(self, answer: SealedAnswer) -> WorkloadConfig:
        """Open the CAS's answer to an attestation of this exchange.

        Raises :class:`ClientError` when the answer names another KEM than this key's, or does
        not open and parse (:func:`~opencas.client.enclave.open_config`).
        """
        kem = answer.sealed.kem
        if kem != WORKLOAD_KEM:
            raise ClientError(
                f"the CAS's answer could not be opened/parsed: it names the KEM {kem[:20]!r}, "
                f"not {WORKLOAD_KEM}"
            )
        return open_config(self.key, answer.sealed.sealed, self.config_id, answer.nonce)


@dataclass(frozen=True)
class SealedAnswer:
    """The CAS's sealed answer to one attestation, and the nonce that attestation used."""

    nonce: str
    sealed: SealedConfig


def attest(
    client: EnclaveClient,
    exchange: WorkloadExchange,
    provider: EvidenceProvider,
    otp: str | None = None,
    *,
    retry_for: float = 0.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> SealedAnswer:
    """Get evidence from ``provider`` over a nonce and attest (with the one-time password
    ``otp``, if given); the answer is not opened.

    The nonce is the client's next nonce (:meth:`EnclaveClient.take_next_nonce`) when it has
    one, else one asked for; a next nonce the CAS refuses is replaced by one asked for, once.
    For ``retry_for`` seconds, an attestation that reached no CAS is made again (module
    docstring), waiting with ``sleep``. Raises :class:`~opencas.client.channel.CasUnreachable`
    (after the last try), :class:`~opencas.errors.AttestationRefused` when the CAS refuses, and
    :class:`~opencas.client.channel.ApiError` or :class:`ClientError` for other failures.
    """

    def post(nonce: str) -> SealedAnswer:
        evidence = exchange.evidence(nonce, provider)
        sealed = client.attest(exchange.config_id, nonce, exchange.public_key, evidence, otp)
        return SealedAnswer(nonce, sealed)

    def once() -> SealedAnswer:
        held = client.take_next_nonce()
        if held is not None:
            try:
                return post(held)
            except AttestationRefused as refusal:
                if refusal.check != NONCE_CHECK:
                    raise
        return post(client.nonce())

    tries = ConnectionTries(retry_for, clock)
    while True:
        try:
            return once()
        except CasUnreachable as exc:
            sleep(tries.wait_after(exc))


async def attest_async(
    client: AsyncEnclaveClient,
    exchange: WorkloadExchange,
    provider: EvidenceProvider,
    *,
    retry_for: float = 0.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> SealedAnswer:
    """:func:`attest` through an :class:`~opencas.client.enclave.AsyncEnclaveClient`."""

    async def post(nonce: str) -> SealedAnswer:
        evidence = exchange.evidence(nonce, provider)
        sealed = await client.attest(exchange.config_id, nonce, exchange.public_key, evidence)
        return SealedAnswer(nonce, sealed)

    async def once() -> SealedAnswer:
        held = client.take_next_nonce()
        if held is not None:
            try:
                return await post(held)
            except AttestationRefused as refusal:
                if refusal.check != NONCE_CHECK:
                    raise
        return await post(await client.nonce())

    tries = ConnectionTries(retry_for, clock)
    while True:
        try:
            return await once()
        except CasUnreachable as exc:
            await sleep(tries.wait_after(exc))


class ConnectionTries:
    """The waits between the tries of one attestation (or any call the CAS may turn away at its
    connection), for ``retry_for`` seconds from now."""

    def __init__(self, retry_for: float, clock: Callable[[], float]) -> None:
        if not 0 <= retry_for < math.inf:
            raise ValueError(f"retry_for must be a finite number of seconds, not {retry_for!r}")
        self._clock = clock
        self._began = clock()
        self._deadline = self._began + retry_for
        self._waits: Iterator[float] = jittered(
            backoff_delays(FIRST_RETRY_WAIT, LONGEST_RETRY_WAIT)
        )
        self._tries = 1

    def wait_after(self, failure: CasUnreachable) -> float:
        """Seconds to wait before trying again after ``failure``. Raises ``failure`` when it
        is not retryable or the time is up (a new :class:`CasUnreachable` saying how many tries
        there were, when there were several)."""
        left = self._deadline - self._clock()
        if not failure.retryable or left <= 0:
            if self._tries == 1:
                raise failure
            spent = self._clock() - self._began
            raise CasUnreachable(
                f"{failure.message} (after {self._tries} tries in {spent:.1f} s)",
                retryable=failure.retryable,
            ) from failure
        self._tries += 1
        return min(next(self._waits), left)


def fetch_configuration(
    client: EnclaveClient,
    config_id: ConfigId,
    provider: EvidenceProvider,
    otp: str | None = None,
    *,
    retry_for: float = 0.0,
    sleep: Callable[[float], None] = time.sleep,
) -> AttestedWorkload:
    """Attest to the CAS behind ``client`` as ``config_id`` with evidence from ``provider``
    (and the one-time password ``otp``, for a service that needs one), trying again for
    ``retry_for`` seconds while the CAS cannot be reached (:func:`attest`).

    Makes a fresh key, attests (:func:`attest`) and returns the opened configuration with the
    key. Raises what :func:`attest` and :meth:`WorkloadExchange.open` raise.
    """
    exchange = WorkloadExchange.new(config_id)
    answer = attest(client, exchange, provider, otp, retry_for=retry_for, sleep=sleep)
    return AttestedWorkload(exchange.open(answer), exchange.key)
