"""Whether another CAS (a *peer*) may receive this CAS's database key, and whether a key offered
by a peer may be trusted.

A peer CAS is any CAS that asks for the key: a new instance joining the cluster, a backup CAS, or
an upgraded build taking over. All of them must pass one rule, :func:`admit_peer`, over the
peer's *verified* evidence (the verifier already checked signatures and collateral), this CAS's
own :class:`SoftwareIdentity` and the upgrades the owner registered:

1. ``platform``: the same TEE type as this CAS (a simulated CAS hands its key only to simulated
   peers, an SGX one only to SGX enclaves);
2. ``debug``: a debug TEE (readable by its host) only when this CAS is in debug mode itself;
3. ``tcb``: the peer's TCB status is known and not worse than this CAS's: every finding it has
   (outdated TCB, configuration or hardening needed) this CAS has too, and so every advisory;
4. ``software``: the same measurement as this CAS, or a registered upgrade;
5. ``security-version``: on SGX, an upgrade is signed by the same signer for the same product
   with an equal or higher ISV SVN (an upgrade never goes down).

:func:`check_key_source` is the other direction: a CAS that receives a key checks the peer that
sealed it, so that a key (and a database) made by anyone else is never served under this build's
measurement. It is the same rule without the upgrades: same platform, no debug giver to a
production CAS, and the same measurement, or on SGX the same signer and product (the giver may be
an older build of the family this one upgrades), or one of the *predecessors* this build names
(:mod:`opencas.attestation.predecessors`: on a platform without a signer, such as TDX, SNP or
the simulated one, the only way a new build can tell the build it upgrades from any other).

:func:`admit_build` is the rule for a build that opens a database directly (its key store
unsealed, which its platform's sealing allowed): the store names the build that serves it, and
this build may take over only when it is that build or a registered upgrade of it.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final, Literal, Protocol

from opencas.attestation.evidence import VerifiedEvidence
from opencas.attestation.workload_policy import SGX_PLATFORMS, TCB_TOLERATIONS

#: A registered upgrade's measurement: lowercase hex of 1 to 64 bytes (MRENCLAVE 32, MRTD and
#: SNP MEASUREMENT 48).
MEASUREMENT_PATTERN: Final = r"^(?:[0-9a-f]{2}){1,64}$"
#: A registered upgrade's SGX signer (MRSIGNER): 32 bytes in lowercase hex.
MRSIGNER_PATTERN: Final = r"^[0-9a-f]{64}$"
#: A backup's name: what ``casctl list-backups`` shows and ``unregister-backup`` takes.
BACKUP_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
#: The longest URL a backup is registered under.
MAX_BACKUP_URL_LENGTH: Final = 512

PeerCheck = Literal["platform", "debug", "tcb", "software", "security-version"]
AdmissionBasis = Literal["same-software", "registered-upgrade", "same-family", "predecessor"]


class BuildFacts(Protocol):
    """What names a build: verified evidence, or a :class:`SoftwareIdentity`."""

    @property
    def platform(self) -> str: ...
    @property
    def measurement(self) -> str: ...
    @property
    def mrsigner(self) -> str | None: ...
    @property
    def isv_prod_id(self) -> int | None: ...
    @property
    def isv_svn(self) -> int | None: ...


@dataclass(frozen=True)
class SoftwareIdentity:
    """What one CAS build on one platform is, as its own verified evidence shows it."""

    platform: str
    measurement: str
    debug: bool
    tcb_status: str
    advisories: tuple[str, ...] = ()
    mrsigner: str | None = None
    isv_prod_id: int | None = None
    isv_svn: int | None = None

    @classmethod
    def of(cls, verified: VerifiedEvidence) -> SoftwareIdentity:
        """The identity that ``verified`` (a CAS's own evidence, verified) shows."""
        return cls(
            platform=verified.platform,
            measurement=verified.measurement,
            debug=verified.debug,
            tcb_status=verified.tcb_status,
            advisories=tuple(verified.advisories),
            mrsigner=verified.mrsigner,
            isv_prod_id=verified.isv_prod_id,
            isv_svn=verified.isv_svn,
        )


@dataclass(frozen=True)
class RegisteredUpgrade:
    """A build the owner registered as an upgrade of this CAS.

    Either one ``measurement`` (any platform), or on SGX a signer form: ``mrsigner`` and
    ``isv_prod_id`` with the lowest ``isv_svn`` accepted.
    """

    measurement: str | None = None
    mrsigner: str | None = None
    isv_prod_id: int | None = None
    min_isv_svn: int | None = None

    def __post_init__(self) -> None:
        signer_form = (self.mrsigner, self.isv_prod_id, self.min_isv_svn)
        has_signer = any(part is not None for part in signer_form)
        if (self.measurement is None) == (not has_signer):
            raise ValueError("an upgrade names either a measurement or a signer form, not both")
        if has_signer and any(part is None for part in signer_form):
            raise ValueError("an upgrade's signer form needs mrsigner, isv_prod_id and min_isv_svn")

    @property
    def upgrade_id(self) -> str:
        """The name of this registration: 16 hex digits of SHA-256 over its fields, so that the
        same upgrade registered twice has one name, and ``casctl`` can compute it from flags."""
        text = "\x00".join(
            "" if part is None else str(part)
            for part in (self.measurement, self.mrsigner, self.isv_prod_id, self.min_isv_svn)
        )
        return hashlib.sha256(b"opencas-upgrade/v1\x00" + text.encode("ascii")).hexdigest()[:16]

    def describe(self) -> str:
        """The upgrade in words, for messages and listings."""
        if self.measurement is not None:
            return f"measurement {self.measurement}"
        return (
            f"signer {self.mrsigner}, product {self.isv_prod_id}, security version "
            f"{self.min_isv_svn} or higher"
        )

    def matches(self, peer: BuildFacts) -> bool:
        """Whether the build ``peer`` runs is this upgrade."""
        if self.measurement is not None:
            return peer.measurement == self.measurement
        return (
            peer.platform in SGX_PLATFORMS
            and peer.mrsigner == self.mrsigner
            and peer.isv_prod_id == self.isv_prod_id
            and peer.isv_svn is not None
            and self.min_isv_svn is not None
            and peer.isv_svn >= self.min_isv_svn
        )


@dataclass(frozen=True)
class PeerDecision:
    """The outcome: admitted (with the ``basis``) or refused (with the failed ``check``); the
    ``reason`` is one sentence for the log of both sides, naming what the peer showed."""

    admitted: bool
    reason: str
    check: PeerCheck | None = None
    basis: AdmissionBasis | None = None


def _refuse(check: PeerCheck, reason: str) -> PeerDecision:
    return PeerDecision(False, reason, check=check)


def _platform_checks(peer: VerifiedEvidence, own: SoftwareIdentity) -> PeerDecision | None:
    """Checks 1 and 2 of the module docstring; the refusal, or ``None`` when they pass."""
    if peer.platform != own.platform:
        return _refuse(
            "platform",
            f"the peer runs on platform '{peer.platform}', this CAS on '{own.platform}'",
        )
    if peer.debug and not own.debug:
        return _refuse(
            "debug",
            "the peer runs in debug mode (its memory is readable from outside) and this CAS "
            "runs in production mode",
        )
    return None


def _common_checks(peer: VerifiedEvidence, own: SoftwareIdentity) -> PeerDecision | None:
    """Checks 1 to 3 of the module docstring; the refusal, or ``None`` when they pass."""
    refused = _platform_checks(peer, own)
    if refused is not None:
        return refused
    findings = TCB_TOLERATIONS.get(peer.tcb_status)
    if findings is None:
        return _refuse("tcb", f"the peer's TCB status is '{peer.tcb_status}', never accepted")
    own_findings = set(TCB_TOLERATIONS.get(own.tcb_status, ()))
    worse = sorted(set(findings) - own_findings)
    if worse:
        return _refuse(
            "tcb",
            f"the peer's TCB status '{peer.tcb_status}' is worse than this CAS's "
            f"'{own.tcb_status}' ({', '.join(worse)})",
        )
    extra = sorted(set(peer.advisories) - set(own.advisories))
    if extra:
        return _refuse(
            "tcb",
            f"the peer's platform has advisories this CAS's has not: {', '.join(extra[:5])}",
        )
    return None


def _same_family(peer: BuildFacts, own: SoftwareIdentity) -> bool:
    return (
        own.platform in SGX_PLATFORMS
        and own.mrsigner is not None
        and peer.mrsigner == own.mrsigner
        and peer.isv_prod_id == own.isv_prod_id
    )


def admit_peer(
    peer: VerifiedEvidence,
    own: SoftwareIdentity,
    upgrades: Sequence[RegisteredUpgrade] = (),
) -> PeerDecision:
    """Whether the peer whose verified evidence is ``peer`` may receive this CAS's key.

    ``own`` is this CAS's identity, ``upgrades`` what the owner registered. The checks are the
    module docstring's, in its order; the first that fails decides.
    """
    refused = _common_checks(peer, own)
    if refused is not None:
        return refused
    return _software_checks(peer, own, upgrades, "the peer", "this CAS")


def admitting_as(own: SoftwareIdentity, serving: SoftwareIdentity | None) -> SoftwareIdentity:
    """The identity a joining peer is checked against: this instance's platform, mode and TCB,
    with the software of ``serving``, the build the store records as serving the CAS.

    Another build may have taken the CAS over since this instance started; a peer must then run
    that build or an upgrade registered from it, never merely this instance's own (older) build.
    """
    if serving is None or serving.measurement == own.measurement:
        return own
    return replace(
        own,
        measurement=serving.measurement,
        mrsigner=serving.mrsigner,
        isv_prod_id=serving.isv_prod_id,
        isv_svn=serving.isv_svn,
    )


def admit_build(
    build: SoftwareIdentity,
    serving: SoftwareIdentity,
    upgrades: Sequence[RegisteredUpgrade] = (),
) -> PeerDecision:
    """Whether ``build``, which opened a database directly, may serve it when the store names
    ``serving`` as the build that serves it.

    The checks are 1 (platform) and 4 and 5 (software, security version) of the module
    docstring; TCB and debug mode are this build's own and shown in its report.
    """
    if build.platform != serving.platform:
        return _refuse(
            "platform",
            f"this build runs on platform '{build.platform}', the CAS was served on "
            f"'{serving.platform}'",
        )
    return _software_checks(build, serving, upgrades, "this build", "the CAS's software")


def _software_checks(
    peer: BuildFacts,
    own: SoftwareIdentity,
    upgrades: Sequence[RegisteredUpgrade],
    who: str,
    whose: str,
) -> PeerDecision:
    """Checks 4 and 5 of the module docstring."""
    if peer.measurement == own.measurement:
        return PeerDecision(True, f"{who} runs the same software", basis="same-software")
    upgrade = next((each for each in upgrades if each.matches(peer)), None)
    if upgrade is None:
        return _refuse(
            "software",
            f"{who} runs software with measurement {peer.measurement}, {whose} is "
            f"{own.measurement}, and no registered upgrade names it (the owner registers one "
            "with casctl register-upgrade)",
        )
    if own.platform in SGX_PLATFORMS and own.mrsigner is not None:
        if not _same_family(peer, own):
            return _refuse(
                "software",
                f"the registered upgrade {peer.measurement} is signed by {peer.mrsigner} for "
                f"product {peer.isv_prod_id}, {whose} by {own.mrsigner} for product "
                f"{own.isv_prod_id}",
            )
        if (peer.isv_svn or 0) < (own.isv_svn or 0):
            return _refuse(
                "security-version",
                f"the security version {peer.isv_svn} of {who} is below the "
                f"{own.isv_svn} of {whose}",
            )
    return PeerDecision(
        True, f"{who} runs the registered upgrade {peer.measurement}", basis="registered-upgrade"
    )


def check_key_source(
    giver: VerifiedEvidence, own: SoftwareIdentity, predecessors: Sequence[str] = ()
) -> PeerDecision:
    """Whether a key sealed by the peer whose verified evidence is ``giver`` may be used here.

    Admitted when the giver passes checks 1 and 2 and runs this build, or (on SGX) a build of
    the same signer and product, at any security version, or a build whose measurement is one
    of ``predecessors`` (the builds this one names as those it upgrades).
    """
    refused = _platform_checks(giver, own)
    if refused is not None:
        return refused
    if giver.measurement == own.measurement:
        return PeerDecision(True, "the key was sealed by the same software", basis="same-software")
    if _same_family(giver, own):
        return PeerDecision(
            True,
            f"the key was sealed by {giver.measurement} of this CAS's signer and product",
            basis="same-family",
        )
    if giver.measurement in predecessors:
        return PeerDecision(
            True,
            f"the key was sealed by {giver.measurement}, a build this one names as its predecessor",
            basis="predecessor",
        )
    return _refuse(
        "software",
        f"the key was sealed by software with measurement {giver.measurement}, not by this "
        f"CAS's {own.measurement} nor by a build it names as its predecessor",
    )


def admit_backup(peer: VerifiedEvidence, own: SoftwareIdentity) -> PeerDecision:
    """Whether the CAS whose verified evidence is ``peer`` may be registered as a backup of
    this CAS, and so receive its database key in every snapshot.

    SCONE's rule for backups, after checks 1 to 3 (platform, debug, an equal or better TCB):
    on SGX the same signer and product (any build of this CAS's family) at an equal or higher
    ISV SVN; elsewhere this CAS's measurement, at an equal or higher security version where the
    evidence states one (simulated machines).
    """
    refused = _common_checks(peer, own)
    if refused is not None:
        return refused
    if own.platform in SGX_PLATFORMS and own.mrsigner is not None:
        return _admit_sgx_backup(peer, own)
    if peer.measurement != own.measurement:
        return _refuse(
            "software",
            f"the backup runs software with measurement {peer.measurement}, this CAS "
            f"{own.measurement}",
        )
    # Where the platform states a security version beside the measurement (the simulated one,
    # set by the machine's operator), a backup never goes below this CAS's either.
    if (peer.isv_svn or 0) < (own.isv_svn or 0):
        return _refuse(
            "security-version",
            f"the backup's security version {peer.isv_svn or 0} is below this CAS's {own.isv_svn}",
        )
    return PeerDecision(True, "the backup runs the same software", basis="same-software")


def _admit_sgx_backup(peer: VerifiedEvidence, own: SoftwareIdentity) -> PeerDecision:
    if not _same_family(peer, own):
        return _refuse(
            "software",
            f"the backup is signed by {peer.mrsigner} for product {peer.isv_prod_id}, this "
            f"CAS by {own.mrsigner} for product {own.isv_prod_id}",
        )
    if (peer.isv_svn or 0) < (own.isv_svn or 0):
        return _refuse(
            "security-version",
            f"the backup's security version {peer.isv_svn} is below this CAS's {own.isv_svn}",
        )
    if peer.measurement == own.measurement:
        return PeerDecision(True, "the backup runs the same software", basis="same-software")
    return PeerDecision(
        True,
        f"the backup runs {peer.measurement} of this CAS's signer and product at security "
        f"version {peer.isv_svn}",
        basis="same-family",
    )
