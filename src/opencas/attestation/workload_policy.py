"""Whether a workload's verified evidence earns it its service's configuration (DESIGN.md §8).

The enclave API verifies a workload's evidence and checks that it binds the request; this module
decides what comes next: whether what the evidence proves is what the session accepts for the
service. It is pure — no I/O, no clock — and made of one small rule per concern, run in a fixed
order; the first rule that fails raises :class:`WorkloadRefused`, whose ``check`` names it.

Refusal messages go back to the workload, which may be anyone who can reach the enclave API.
They name the service and what the *evidence* says (hex values shortened to their first and last
four digits), and what the workload or the session's owner can change; they never list the
measurements, signers or platforms the session accepts, nor anything about other services.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, TypeAlias

from opencas.attestation.evidence import VerifiedEvidence
from opencas.attestation.simulated import EVIDENCE_TYPE as SIMULATED_PLATFORM
from opencas.errors import AttestationRefused
from opencas.policy.model import AttestationSecurity, AttestationVariant, Service, Signer

WorkloadCheck: TypeAlias = Literal[
    "simulated",
    "debug-mode",
    "mode",
    "no-policy",
    "measurement",
    "signer",
    "platform",
    "tcb",
    "advisory",
]
"""The name of the rule that refused a workload."""

WORKLOAD_CHECKS: tuple[WorkloadCheck, ...] = (
    "simulated",
    "debug-mode",
    "mode",
    "no-policy",
    "measurement",
    "signer",
    "platform",
    "tcb",
    "advisory",
)
"""Every value :attr:`WorkloadRefused.check` can take."""

#: Platform names whose evidence the SGX fields of a variant (mrenclave, signer) describe. The
#: verifiers name the platform after the evidence type, so SGX DCAP evidence says "sgx-dcap".
SGX_PLATFORMS = frozenset({"sgx", "sgx-dcap"})
TDX_PLATFORM = "tdx"
SNP_PLATFORM = "snp"

#: The TCB statuses a session may accept, each with what it must tolerate to accept it. A status
#: not listed here ("Revoked", or one a newer verifier invents) is never accepted.
TCB_TOLERATIONS: dict[str, tuple[str, ...]] = {
    "UpToDate": (),
    "Simulated": (),
    "SWHardeningNeeded": ("software-hardening-needed",),
    "ConfigurationNeeded": ("insecure-configuration",),
    "ConfigurationAndSWHardeningNeeded": ("insecure-configuration", "software-hardening-needed"),
    "OutOfDate": ("outdated-tcb",),
    "OutOfDateConfigurationNeeded": ("outdated-tcb", "insecure-configuration"),
}

_ALL_ADVISORIES = "*"
_MAX_LISTED_ADVISORIES = 5


class WorkloadRefused(AttestationRefused):
    """The workload's evidence verified, but its service's session does not accept it.

    ``check`` is one of :data:`WORKLOAD_CHECKS`; the message says what the evidence showed and
    what would make it acceptable, without revealing what the session accepts.
    """

    check: WorkloadCheck

    def __init__(self, check: WorkloadCheck, message: str) -> None:
        super().__init__(check, message)


@dataclass(frozen=True)
class _Case:
    """Everything a rule may look at."""

    verified: VerifiedEvidence
    service: Service
    security: AttestationSecurity
    cas_debug: bool

    @property
    def service_ref(self) -> str:
        return f"service `{self.service.name}`"


def check_workload(
    verified: VerifiedEvidence,
    service: Service,
    security: AttestationSecurity,
    *,
    cas_debug: bool,
) -> None:
    """Return if ``service``'s session accepts a workload with ``verified`` evidence; else raise.

    ``verified`` must already be verified and bound to the request; ``security`` is the
    session's attestation settings and ``cas_debug`` whether this CAS runs in debug mode. The
    rules run in this order and the first that fails raises :class:`WorkloadRefused` with its
    ``check``:

    1. ``simulated``: simulated evidence needs a CAS in debug mode *and* a session that
       tolerates ``simulated``;
    2. ``mode``: attestation mode ``none`` needs a CAS in debug mode;
    3. ``debug-mode``: hardware evidence from a TEE in debug mode needs ``debug-mode`` tolerated;
    4. ``no-policy`` / ``measurement`` / ``signer``: unless the mode is ``none``, the service has
       attestation variants and at least one of them holds entirely for the evidence's platform
       (``signer`` when an SGX variant failed on its signer alone);
    5. ``platform``: when the service names platforms, the evidence's platform key is one of them;
    6. ``tcb``: the TCB status is acceptable, with the tolerations it needs;
    7. ``advisory``: every advisory is ignored by the session (``*`` only on a CAS in debug mode).
    """
    case = _Case(verified=verified, service=service, security=security, cas_debug=cas_debug)
    for rule in _RULES:
        rule(case)


# --- 1-3: simulated evidence, attestation mode, debug TEEs ----------------------------------------


def _check_simulated(case: _Case) -> None:
    """Simulated evidence only on a debug CAS, for a session that tolerates it."""
    if case.verified.platform != SIMULATED_PLATFORM:
        return
    missing = []
    if not case.cas_debug:
        missing.append("this CAS does not run in debug mode")
    if "simulated" not in case.security.tolerate:
        missing.append(f"the session of {case.service_ref} does not tolerate 'simulated'")
    if missing:
        raise WorkloadRefused(
            "simulated",
            "simulated evidence proves nothing about the code that runs, so it is accepted only "
            "by a CAS in debug mode for a session that tolerates 'simulated'; "
            + " and ".join(missing),
        )


def _check_mode(case: _Case) -> None:
    """Attestation mode ``none`` only on a debug CAS."""
    if case.security.mode == "none" and not case.cas_debug:
        raise WorkloadRefused(
            "mode",
            f"the session of {case.service_ref} sets attestation mode 'none', which only a CAS "
            "in debug mode accepts; the session's owner must set mode 'hardware' and give the "
            "service an attestation policy",
        )


def _check_debug(case: _Case) -> None:
    """A hardware TEE in debug mode only where the session tolerates ``debug-mode``."""
    verified = case.verified
    # Simulated evidence always says debug; the simulated rule already decided about it.
    if verified.platform == SIMULATED_PLATFORM or not verified.debug:
        return
    if "debug-mode" not in case.security.tolerate:
        raise WorkloadRefused(
            "debug-mode",
            f"the {_text(verified.platform)} TEE runs in debug mode, so its memory can be read "
            f"from outside, and the session of {case.service_ref} does not tolerate "
            "'debug-mode'; run the workload in a production (non-debug) TEE",
        )


# --- 4: the code that runs -----------------------------------------------------------------------

# What a variant's fields for one platform concluded about the evidence: ``None`` when the variant
# sets no field for that platform, otherwise the checks that failed (empty: the variant holds).
_Failures: TypeAlias = frozenset[WorkloadCheck] | None
_Matcher: TypeAlias = Callable[[AttestationVariant, VerifiedEvidence], _Failures]


def _compare(pairs: Iterable[tuple[str | None, str | None]]) -> _Failures:
    """Each ``(required, actual)`` pair with a requirement must be equal; measurement fields."""
    required = [(want, have) for want, have in pairs if want is not None]
    if not required:
        return None
    if all(want == have for want, have in required):
        return frozenset()
    return frozenset({"measurement"})


def _simulated_failures(variant: AttestationVariant, verified: VerifiedEvidence) -> _Failures:
    if not variant.simulated_measurement:
        return None
    if verified.measurement in variant.simulated_measurement:
        return frozenset()
    return frozenset({"measurement"})


def _signer_holds(signer: Signer, verified: VerifiedEvidence) -> bool:
    if verified.mrsigner is None or verified.mrsigner != signer.mrsigner:
        return False
    if signer.isvprodid is not None and verified.isv_prod_id != signer.isvprodid:
        return False
    return _svn_holds(signer, verified.isv_svn)


def _svn_holds(signer: Signer, svn: int | None) -> bool:
    """The security version is the exact one, or within the inclusive bounds, that are set."""
    low = signer.isvsvn if signer.isvsvn is not None else signer.isvsvn_min
    high = signer.isvsvn if signer.isvsvn is not None else signer.isvsvn_max
    if low is None and high is None:
        return True
    # A bound on a version the evidence does not state cannot be shown to hold.
    if svn is None:
        return False
    return (low is None or svn >= low) and (high is None or svn <= high)


def _sgx_failures(variant: AttestationVariant, verified: VerifiedEvidence) -> _Failures:
    if not variant.mrenclave and variant.signer is None:
        return None
    failed: set[WorkloadCheck] = set()
    if variant.mrenclave and verified.measurement not in variant.mrenclave:
        failed.add("measurement")
    if variant.signer is not None and not _signer_holds(variant.signer, verified):
        failed.add("signer")
    return frozenset(failed)


def _tdx_failures(variant: AttestationVariant, verified: VerifiedEvidence) -> _Failures:
    required = (variant.mrtd, variant.rtmr0, variant.rtmr1, variant.rtmr2, variant.rtmr3)
    # Evidence with fewer RTMRs than a variant names cannot satisfy the missing ones.
    actual: tuple[str | None, ...] = (verified.measurement, *verified.rtmrs, None, None, None, None)
    return _compare(zip(required, actual[: len(required)], strict=True))


def _snp_failures(variant: AttestationVariant, verified: VerifiedEvidence) -> _Failures:
    return _compare(
        ((variant.measurement, verified.measurement), (variant.host_data, verified.host_data))
    )


_MATCHERS: dict[str, tuple[_Matcher, str]] = {
    SIMULATED_PLATFORM: (_simulated_failures, "simulated measurement"),
    **dict.fromkeys(SGX_PLATFORMS, (_sgx_failures, "enclave (MRENCLAVE and signer)")),
    TDX_PLATFORM: (_tdx_failures, "trust domain (MRTD and RTMR0 to RTMR3)"),
    SNP_PLATFORM: (_snp_failures, "guest (measurement and host data)"),
}


def _check_variants(case: _Case) -> None:
    """At least one attestation variant of the service holds entirely for this evidence."""
    if case.security.mode == "none":
        return
    if not case.service.attestation:
        raise WorkloadRefused(
            "no-policy",
            f"{case.service_ref} has no attestation policy, so no workload can prove it runs the "
            "intended code; the session's owner must add one (mrenclave, signer, mrtd, "
            "measurement or simulated_measurement)",
        )
    verified = case.verified
    outcomes: list[_Failures] = []
    what = "code"
    if verified.platform in _MATCHERS:
        matcher, what = _MATCHERS[verified.platform]
        outcomes = [matcher(variant, verified) for variant in case.service.attestation]
    if frozenset() in outcomes:
        return
    if frozenset({"signer"}) in outcomes:
        raise WorkloadRefused("signer", _signer_refusal(case))
    raise WorkloadRefused(
        "measurement",
        f"measurement {_short(verified.measurement)} is not allowed for {case.service_ref}: no "
        f"attestation variant of the service accepts this {what} on platform "
        f"'{_text(verified.platform)}'; run the code the session was written for, or ask the "
        "session's owner to accept this measurement",
    )


def _signer_refusal(case: _Case) -> str:
    verified = case.verified
    signer = "unknown" if verified.mrsigner is None else _short(verified.mrsigner)
    details = [
        f"{label} {value}"
        for label, value in (
            ("product id", verified.isv_prod_id),
            ("security version", verified.isv_svn),
        )
        if value is not None
    ]
    described = f" ({', '.join(details)})" if details else ""
    return (
        f"enclave signer {signer}{described} is not allowed for {case.service_ref}: no "
        "attestation variant of the service accepts this signer, product id and security "
        "version; run an enclave build the session accepts, or ask the session's owner to "
        "accept this one"
    )


# --- 5-7: platform key, TCB, advisories ----------------------------------------------------------


def _check_platform(case: _Case) -> None:
    """When the service names platforms, the evidence comes from one of them."""
    platforms = case.service.platforms
    if platforms and case.verified.platform_key_hash not in platforms:
        raise WorkloadRefused(
            "platform",
            f"the platform with key hash {_short(case.verified.platform_key_hash)} is not one of "
            f"the platforms {case.service_ref} may run on; run the workload on one of them, or "
            "ask the session's owner to add this platform",
        )


def _check_tcb(case: _Case) -> None:
    """The platform's TCB status is known, not revoked, and its findings are tolerated."""
    status = case.verified.tcb_status
    needed = TCB_TOLERATIONS.get(status)
    if needed is None:
        why = (
            "the platform's keys are revoked"
            if status == "Revoked"
            else "OpenCAS does not know what this status means"
        )
        raise WorkloadRefused(
            "tcb",
            f"the platform's TCB status is '{_text(status)}', which no session can accept "
            f"({why}); run {case.service_ref} on an up-to-date platform",
        )
    missing = [item for item in needed if item not in case.security.tolerate]
    if missing:
        listed = " and ".join(f"'{item}'" for item in missing)
        raise WorkloadRefused(
            "tcb",
            f"the platform's TCB status is '{status}', and the session of {case.service_ref} "
            f"does not tolerate {listed}; update the platform (microcode, firmware, BIOS "
            "settings), or ask the session's owner to tolerate it",
        )


def _check_advisories(case: _Case) -> None:
    """Every security advisory that applies to the platform is ignored by the session."""
    ignored = case.security.ignore_advisories
    if _ALL_ADVISORIES in ignored and case.cas_debug:
        return
    unignored = [item for item in dict.fromkeys(case.verified.advisories) if item not in ignored]
    if not unignored:
        return
    listed = ", ".join(_text(item) for item in unignored[:_MAX_LISTED_ADVISORIES])
    if len(unignored) > _MAX_LISTED_ADVISORIES:
        listed += f" and {len(unignored) - _MAX_LISTED_ADVISORIES} more"
    noun = "security advisory" if len(unignored) == 1 else "security advisories"
    wildcard = (
        " ('*' ignores every advisory only on a CAS in debug mode)"
        if _ALL_ADVISORIES in ignored
        else ""
    )
    raise WorkloadRefused(
        "advisory",
        f"the platform is affected by {noun} {listed} that the session of "
        f"{case.service_ref} does not ignore{wildcard}; update the platform, or ask the "
        "session's owner to list it in ignore_advisories",
    )


_RULES: tuple[Callable[[_Case], None], ...] = (
    _check_simulated,
    _check_mode,
    _check_debug,
    _check_variants,
    _check_platform,
    _check_tcb,
    _check_advisories,
)


# --- message helpers ------------------------------------------------------------------------------


def _short(value: str) -> str:
    """A hex value as its first and last four digits: enough to recognise, short to read."""
    return value if len(value) <= 10 else f"{value[:4]}…{value[-4:]}"


def _text(value: str, limit: int = 40) -> str:
    """A verifier-supplied word (platform, status, advisory id), bounded in length."""
    return value if len(value) <= limit else value[: limit - 1] + "…"
