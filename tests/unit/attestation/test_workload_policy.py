"""check_workload: every rule of the workload decision, accepted and refused, and its messages."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from opencas.attestation.evidence import VerifiedEvidence
from opencas.attestation.workload_policy import (
    TCB_TOLERATIONS,
    WORKLOAD_CHECKS,
    WorkloadRefused,
    check_workload,
)
from opencas.errors import AttestationRefused
from opencas.policy.model import AttestationSecurity, Service
from opencas.policy.parse import parse_session

SIM = "5e" * 32
SIM_OTHER = "6f" * 32
MRENCLAVE = "a1" * 32
MRENCLAVE_OTHER = "a2" * 32
MRSIGNER = "b1" * 32
MRSIGNER_OTHER = "b2" * 32
MRTD = "c1" * 48
RTMR = ("d0" * 48, "d1" * 48, "d2" * 48, "d3" * 48)
SNP_MEASUREMENT = "e1" * 48
HOST_DATA = "f1" * 32
KEY = "9a" * 32
KEY_OTHER = "9b" * 32
KEY_THIRD = "9c" * 32
ADVISORY_A = "INTEL-SA-00001"
ADVISORY_B = "INTEL-SA-00002"

Policy = tuple[Service, AttestationSecurity]


def policy(
    attestation: Any = None,
    *,
    platforms: tuple[str, ...] = (),
    mode: str = "hardware",
    tolerate: tuple[str, ...] = (),
    ignore: tuple[str, ...] = (),
) -> Policy:
    """Service `api` and its session's attestation settings, read from a small YAML session."""
    lines = ["name: s", "version: '0.3'", "services:", "  - name: api"]
    if attestation is not None:
        # JSON is YAML: the structure is written exactly as given.
        lines.append(f"    attestation: {json.dumps(attestation)}")
    if platforms:
        lines.append(f"    platforms: {json.dumps(list(platforms))}")
    lines += [
        "security:",
        "  attestation:",
        f"    mode: {mode}",
        f"    tolerate: {json.dumps(list(tolerate))}",
        f"    ignore_advisories: {json.dumps(list(ignore))}",
    ]
    session = parse_session("\n".join(lines) + "\n", "t.yaml")
    service = session.service("api")
    assert service is not None
    return service, session.security.attestation


def simulated(measurement: str = SIM, **changes: Any) -> VerifiedEvidence:
    base = VerifiedEvidence(
        platform="simulated",
        measurement=measurement,
        report_data=bytes(64),
        debug=True,
        platform_key_hash=KEY,
        tcb_status="Simulated",
        advisories=(),
    )
    return replace(base, **changes)


def sgx(measurement: str = MRENCLAVE, **changes: Any) -> VerifiedEvidence:
    base = VerifiedEvidence(
        platform="sgx",
        measurement=measurement,
        report_data=bytes(64),
        debug=False,
        platform_key_hash=KEY,
        tcb_status="UpToDate",
        advisories=(),
        mrsigner=MRSIGNER,
        isv_prod_id=7,
        isv_svn=5,
    )
    return replace(base, **changes)


def tdx(measurement: str = MRTD, **changes: Any) -> VerifiedEvidence:
    base = VerifiedEvidence(
        platform="tdx",
        measurement=measurement,
        report_data=bytes(64),
        debug=False,
        platform_key_hash=KEY,
        tcb_status="UpToDate",
        advisories=(),
        rtmrs=RTMR,
    )
    return replace(base, **changes)


def snp(measurement: str = SNP_MEASUREMENT, **changes: Any) -> VerifiedEvidence:
    base = VerifiedEvidence(
        platform="snp",
        measurement=measurement,
        report_data=bytes(64),
        debug=False,
        platform_key_hash=KEY,
        tcb_status="UpToDate",
        advisories=(),
        host_data=HOST_DATA,
    )
    return replace(base, **changes)


SIM_POLICY = {"simulated_measurement": SIM}
SGX_POLICY = {"mrenclave": MRENCLAVE}


def accept(verified: VerifiedEvidence, given: Policy, *, cas_debug: bool = False) -> None:
    service, security = given
    check_workload(verified, service, security, cas_debug=cas_debug)


def refuse(
    verified: VerifiedEvidence, given: Policy, *, cas_debug: bool = False
) -> WorkloadRefused:
    service, security = given
    with pytest.raises(WorkloadRefused) as caught:
        check_workload(verified, service, security, cas_debug=cas_debug)
    refusal = caught.value
    assert refusal.check in WORKLOAD_CHECKS
    assert "service `api`" in refusal.message or refusal.check == "simulated"
    return refusal


def test_a_refusal_is_an_attestation_refusal() -> None:
    refusal = refuse(sgx(MRENCLAVE_OTHER), policy(SGX_POLICY))
    assert isinstance(refusal, AttestationRefused)
    assert refusal.code == "attestation-refused"
    assert refusal.http_status == 403
    assert refusal.to_json()["error"] == "attestation-refused"


# --- simulated evidence --------------------------------------------------------------------------


def test_simulated_evidence_on_a_debug_cas_for_a_tolerating_session_is_accepted() -> None:
    accept(simulated(), policy(SIM_POLICY, tolerate=("simulated",)), cas_debug=True)


@pytest.mark.parametrize(
    ("cas_debug", "tolerate", "missing"),
    [
        (False, ("simulated",), ["does not run in debug mode"]),
        (True, (), ["does not tolerate 'simulated'"]),
        (False, (), ["does not run in debug mode", "does not tolerate 'simulated'"]),
        (False, ("simulated", "debug-mode"), ["does not run in debug mode"]),
    ],
)
def test_simulated_evidence_needs_a_debug_cas_and_a_tolerating_session(
    cas_debug: bool, tolerate: tuple[str, ...], missing: list[str]
) -> None:
    refusal = refuse(simulated(), policy(SIM_POLICY, tolerate=tolerate), cas_debug=cas_debug)
    assert refusal.check == "simulated"
    for reason in missing:
        assert reason in refusal.message
    for reason in {"does not run in debug mode", "does not tolerate 'simulated'"} - set(missing):
        assert reason not in refusal.message


def test_mode_none_does_not_admit_simulated_evidence() -> None:
    for cas_debug, tolerate in ((False, ("simulated",)), (True, ())):
        refusal = refuse(simulated(), policy(mode="none", tolerate=tolerate), cas_debug=cas_debug)
        assert refusal.check == "simulated"


def test_simulated_evidence_is_debug_but_needs_no_debug_mode_toleration() -> None:
    accept(simulated(), policy(SIM_POLICY, tolerate=("simulated",)), cas_debug=True)
    accept(simulated(debug=False), policy(SIM_POLICY, tolerate=("simulated",)), cas_debug=True)


# --- attestation mode none -----------------------------------------------------------------------


def test_mode_none_is_refused_by_a_production_cas() -> None:
    refusal = refuse(sgx(), policy(SGX_POLICY, mode="none"), cas_debug=False)
    assert refusal.check == "mode"
    assert "'none'" in refusal.message


def test_mode_none_on_a_debug_cas_skips_the_measurement_and_signer_checks() -> None:
    accept(sgx(), policy(mode="none"), cas_debug=True)
    accept(sgx(MRENCLAVE_OTHER), policy(SGX_POLICY, mode="none"), cas_debug=True)
    signer = {"signer": {"mrsigner": MRSIGNER_OTHER}}
    accept(sgx(), policy(signer, mode="none"), cas_debug=True)
    accept(
        simulated(SIM_OTHER),
        policy(SIM_POLICY, mode="none", tolerate=("simulated",)),
        cas_debug=True,
    )


def test_mode_none_still_checks_debug_platform_tcb_and_advisories() -> None:
    given = policy(mode="none", platforms=(KEY,))
    assert refuse(sgx(debug=True), given, cas_debug=True).check == "debug-mode"
    assert refuse(sgx(platform_key_hash=KEY_OTHER), given, cas_debug=True).check == "platform"
    assert refuse(sgx(tcb_status="Revoked"), given, cas_debug=True).check == "tcb"
    assert refuse(sgx(advisories=(ADVISORY_A,)), given, cas_debug=True).check == "advisory"


# --- debug TEEs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("evidence", [sgx(debug=True), tdx(debug=True), snp(debug=True)])
def test_hardware_evidence_in_debug_mode_needs_debug_mode_tolerated(
    evidence: VerifiedEvidence,
) -> None:
    attestation = [SGX_POLICY, {"mrtd": MRTD}, {"measurement": SNP_MEASUREMENT}]
    for cas_debug in (False, True):
        refusal = refuse(evidence, policy(attestation), cas_debug=cas_debug)
        assert refusal.check == "debug-mode"
        assert f"the {evidence.platform} TEE runs in debug mode" in refusal.message
    accept(evidence, policy(attestation, tolerate=("debug-mode",)))


def test_hardware_evidence_in_production_mode_needs_no_toleration() -> None:
    accept(sgx(), policy(SGX_POLICY))


# --- no policy -----------------------------------------------------------------------------------


def test_a_service_without_attestation_policy_is_refused() -> None:
    for evidence, cas_debug, tolerate in (
        (sgx(), False, ()),
        (simulated(), True, ("simulated",)),
    ):
        refusal = refuse(evidence, policy(tolerate=tolerate), cas_debug=cas_debug)
        assert refusal.check == "no-policy"
        assert "service `api` has no attestation policy" in refusal.message


# --- simulated measurements ----------------------------------------------------------------------


def sim_policy(attestation: Any) -> Policy:
    return policy(attestation, tolerate=("simulated",))


def test_simulated_measurement_any_of() -> None:
    given = sim_policy({"simulated_measurement": [SIM_OTHER, SIM]})
    accept(simulated(SIM), given, cas_debug=True)
    accept(simulated(SIM_OTHER), given, cas_debug=True)
    refusal = refuse(simulated("77" * 32), given, cas_debug=True)
    assert refusal.check == "measurement"


def test_wrong_measurement_message_names_the_service_not_the_allowed_values() -> None:
    measurement = "3a" + "00" * 30 + "f1"
    refusal = refuse(simulated(measurement), sim_policy(SIM_POLICY), cas_debug=True)
    assert refusal.check == "measurement"
    assert "measurement 3a00…00f1 is not allowed for service `api`" in refusal.message
    assert SIM not in refusal.message
    assert SIM[:4] not in refusal.message
    assert measurement not in refusal.message


def test_a_variant_with_no_field_for_the_platform_does_not_hold() -> None:
    refusal = refuse(simulated(), sim_policy(SGX_POLICY), cas_debug=True)
    assert refusal.check == "measurement"
    assert refuse(sgx(), policy(SIM_POLICY)).check == "measurement"
    assert refuse(tdx(), policy([SGX_POLICY, SIM_POLICY])).check == "measurement"
    assert refuse(snp(), policy({"mrtd": MRTD})).check == "measurement"


def test_fields_of_other_platforms_in_a_variant_are_ignored() -> None:
    both = {"mrenclave": MRENCLAVE, "simulated_measurement": SIM}
    accept(sgx(), policy(both))
    accept(simulated(), sim_policy(both), cas_debug=True)


def test_evidence_from_an_unknown_platform_matches_no_variant() -> None:
    refusal = refuse(sgx(platform="future-tee"), policy(SGX_POLICY))
    assert refusal.check == "measurement"
    assert "is not allowed for service `api`" in refusal.message


# --- SGX: mrenclave and signer -------------------------------------------------------------------


def test_mrenclave_any_of() -> None:
    given = policy({"mrenclave": [MRENCLAVE_OTHER, MRENCLAVE]})
    accept(sgx(MRENCLAVE), given)
    accept(sgx(MRENCLAVE_OTHER), given)
    refusal = refuse(sgx("a3" * 32), given)
    assert refusal.check == "measurement"
    assert "measurement a3a3…a3a3 is not allowed for service `api`" in refusal.message
    assert MRENCLAVE not in refusal.message
    assert MRENCLAVE_OTHER not in refusal.message


def test_sgx_dcap_platform_is_sgx() -> None:
    accept(sgx(platform="sgx-dcap"), policy(SGX_POLICY))
    assert refuse(sgx(MRENCLAVE_OTHER, platform="sgx-dcap"), policy(SGX_POLICY)).check == (
        "measurement"
    )


def test_a_variant_mapping_must_hold_entirely() -> None:
    given = policy({"mrenclave": MRENCLAVE, "signer": {"mrsigner": MRSIGNER}})
    accept(sgx(), given)
    assert refuse(sgx(mrsigner=MRSIGNER_OTHER), given).check == "signer"
    assert refuse(sgx(MRENCLAVE_OTHER), given).check == "measurement"
    assert refuse(sgx(MRENCLAVE_OTHER, mrsigner=MRSIGNER_OTHER), given).check == "measurement"


def test_any_one_variant_suffices() -> None:
    given = policy([{"mrenclave": MRENCLAVE_OTHER}, {"signer": {"mrsigner": MRSIGNER}}])
    accept(sgx(MRENCLAVE), given)
    accept(sgx(MRENCLAVE_OTHER, mrsigner=MRSIGNER_OTHER), given)
    assert refuse(sgx(MRENCLAVE, mrsigner=MRSIGNER_OTHER), given).check == "signer"


def test_signer_refusal_message() -> None:
    given = policy({"signer": {"mrsigner": MRSIGNER, "isvsvn_min": 6}})
    refusal = refuse(sgx(mrsigner=MRSIGNER), given)
    assert refusal.check == "signer"
    assert "enclave signer b1b1…b1b1 (product id 7, security version 5)" in refusal.message
    assert "is not allowed for service `api`" in refusal.message
    assert MRSIGNER not in refusal.message
    assert "6" not in refusal.message


def test_evidence_without_a_signer_fails_a_signer_policy() -> None:
    refusal = refuse(sgx(mrsigner=None), policy({"signer": {"mrsigner": MRSIGNER}}))
    assert refusal.check == "signer"
    assert "enclave signer unknown" in refusal.message


@pytest.mark.parametrize(
    ("prod_id", "accepted"), [(7, True), (8, False), (None, False)], ids=["same", "other", "none"]
)
def test_signer_product_id(prod_id: int | None, accepted: bool) -> None:
    given = policy({"signer": {"mrsigner": MRSIGNER, "isvprodid": 7}})
    if accepted:
        accept(sgx(isv_prod_id=prod_id), given)
    else:
        assert refuse(sgx(isv_prod_id=prod_id), given).check == "signer"


def test_signer_without_product_id_accepts_any() -> None:
    given = policy({"signer": {"mrsigner": MRSIGNER}})
    for prod_id in (0, 7, 65535, None):
        accept(sgx(isv_prod_id=prod_id, isv_svn=None), given)


@pytest.mark.parametrize(
    ("bounds", "svn", "accepted"),
    [
        ({"isvsvn": 5}, 5, True),
        ({"isvsvn": 5}, 4, False),
        ({"isvsvn": 5}, 6, False),
        ({"isvsvn_min": 5}, 4, False),
        ({"isvsvn_min": 5}, 5, True),
        ({"isvsvn_min": 5}, 65535, True),
        ({"isvsvn_max": 5}, 0, True),
        ({"isvsvn_max": 5}, 5, True),
        ({"isvsvn_max": 5}, 6, False),
        ({"isvsvn_min": 3, "isvsvn_max": 5}, 2, False),
        ({"isvsvn_min": 3, "isvsvn_max": 5}, 3, True),
        ({"isvsvn_min": 3, "isvsvn_max": 5}, 5, True),
        ({"isvsvn_min": 3, "isvsvn_max": 5}, 6, False),
        ({"isvsvn": 5}, None, False),
        ({"isvsvn_min": 0}, None, False),
        ({"isvsvn_max": 5}, None, False),
        ({}, None, True),
    ],
)
def test_signer_security_version(bounds: dict[str, int], svn: int | None, accepted: bool) -> None:
    given = policy({"signer": {"mrsigner": MRSIGNER, **bounds}})
    if accepted:
        accept(sgx(isv_svn=svn), given)
    else:
        assert refuse(sgx(isv_svn=svn), given).check == "signer"


# --- TDX: MRTD and RTMRs -------------------------------------------------------------------------


def test_tdx_mrtd() -> None:
    given = policy({"mrtd": MRTD})
    accept(tdx(), given)
    accept(tdx(rtmrs=()), given)
    refusal = refuse(tdx("c2" * 48), given)
    assert refusal.check == "measurement"
    assert "measurement c2c2…c2c2 is not allowed for service `api`" in refusal.message
    assert MRTD not in refusal.message


def test_tdx_mrtd_with_rtmrs_must_all_hold() -> None:
    given = policy({"mrtd": MRTD, "rtmr0": RTMR[0], "rtmr3": RTMR[3]})
    accept(tdx(), given)
    wrong_rtmr3 = (*RTMR[:3], "ee" * 48)
    assert refuse(tdx(rtmrs=wrong_rtmr3), given).check == "measurement"
    assert refuse(tdx("c2" * 48), given).check == "measurement"
    assert refuse(tdx(rtmrs=RTMR[:3]), given).check == "measurement"
    assert refuse(tdx(rtmrs=()), given).check == "measurement"
    # An RTMR the variant does not name may be anything.
    accept(tdx(rtmrs=(RTMR[0], "ee" * 48, "ee" * 48, RTMR[3])), given)


def test_tdx_rtmr_without_mrtd() -> None:
    given = policy({"rtmr1": RTMR[1]})
    accept(tdx("c2" * 48), given)
    assert refuse(tdx(rtmrs=(RTMR[0],)), given).check == "measurement"


# --- SNP: measurement and host data --------------------------------------------------------------


def test_snp_measurement_and_host_data() -> None:
    given = policy({"measurement": SNP_MEASUREMENT, "host_data": HOST_DATA})
    accept(snp(), given)
    assert refuse(snp(host_data="f2" * 32), given).check == "measurement"
    assert refuse(snp(host_data=None), given).check == "measurement"
    refusal = refuse(snp("e2" * 48), given)
    assert refusal.check == "measurement"
    assert "measurement e2e2…e2e2 is not allowed for service `api`" in refusal.message
    assert SNP_MEASUREMENT not in refusal.message
    assert HOST_DATA not in refusal.message


def test_snp_measurement_alone() -> None:
    given = policy({"measurement": SNP_MEASUREMENT})
    accept(snp(host_data=None), given)
    accept(snp(host_data="f2" * 32), given)
    assert refuse(snp("e2" * 48), given).check == "measurement"


# --- platforms -----------------------------------------------------------------------------------


def test_platforms_list() -> None:
    given = policy(SGX_POLICY, platforms=(KEY_OTHER, KEY))
    accept(sgx(platform_key_hash=KEY), given)
    accept(sgx(platform_key_hash=KEY_OTHER), given)
    refusal = refuse(sgx(platform_key_hash=KEY_THIRD), given)
    assert refusal.check == "platform"
    assert "key hash 9c9c…9c9c" in refusal.message
    assert "service `api`" in refusal.message
    assert KEY not in refusal.message
    assert KEY_OTHER not in refusal.message
    assert KEY[:4] not in refusal.message
    assert KEY_OTHER[:4] not in refusal.message


def test_no_platforms_admits_any_platform() -> None:
    accept(sgx(platform_key_hash=KEY_THIRD), policy(SGX_POLICY))


# --- TCB status ----------------------------------------------------------------------------------

ALL_TCB_TOLERATIONS = ("insecure-configuration", "outdated-tcb", "software-hardening-needed")


@pytest.mark.parametrize(
    ("status", "needed"),
    [
        ("UpToDate", ()),
        ("Simulated", ()),
        ("SWHardeningNeeded", ("software-hardening-needed",)),
        ("ConfigurationNeeded", ("insecure-configuration",)),
        (
            "ConfigurationAndSWHardeningNeeded",
            ("insecure-configuration", "software-hardening-needed"),
        ),
        ("OutOfDate", ("outdated-tcb",)),
        ("OutOfDateConfigurationNeeded", ("insecure-configuration", "outdated-tcb")),
    ],
)
def test_tcb_status_needs_its_tolerations(status: str, needed: tuple[str, ...]) -> None:
    assert sorted(TCB_TOLERATIONS[status]) == sorted(needed)
    accept(sgx(tcb_status=status), policy(SGX_POLICY, tolerate=needed))
    for missing in needed:
        others = tuple(item for item in ALL_TCB_TOLERATIONS if item != missing)
        refusal = refuse(sgx(tcb_status=status), policy(SGX_POLICY, tolerate=others))
        assert refusal.check == "tcb"
        assert f"'{status}'" in refusal.message
        assert f"does not tolerate '{missing}'" in refusal.message


def test_tcb_status_with_two_findings_names_both_when_neither_is_tolerated() -> None:
    refusal = refuse(sgx(tcb_status="OutOfDateConfigurationNeeded"), policy(SGX_POLICY))
    assert refusal.check == "tcb"
    assert "'outdated-tcb' and 'insecure-configuration'" in refusal.message


@pytest.mark.parametrize("status", ["Revoked", "SomethingNew", "", "uptodate", "X" * 500])
def test_revoked_and_unknown_tcb_status_are_never_accepted(status: str) -> None:
    everything = (*ALL_TCB_TOLERATIONS, "debug-mode", "hyperthreading", "aepic-leak")
    for cas_debug in (False, True):
        refusal = refuse(
            sgx(tcb_status=status), policy(SGX_POLICY, tolerate=everything), cas_debug=cas_debug
        )
        assert refusal.check == "tcb"
        assert "no session can accept" in refusal.message
        assert len(refusal.message) < 300


# --- advisories ----------------------------------------------------------------------------------


def test_no_advisories_need_no_ignoring() -> None:
    accept(sgx(advisories=()), policy(SGX_POLICY))


def test_every_advisory_must_be_ignored_individually() -> None:
    evidence = sgx(advisories=(ADVISORY_A, ADVISORY_B))
    accept(evidence, policy(SGX_POLICY, ignore=(ADVISORY_A, ADVISORY_B)))
    accept(evidence, policy(SGX_POLICY, ignore=(ADVISORY_B, ADVISORY_A, "INTEL-SA-00003")))
    refusal = refuse(evidence, policy(SGX_POLICY, ignore=(ADVISORY_A,)))
    assert refusal.check == "advisory"
    assert ADVISORY_B in refusal.message
    assert ADVISORY_A not in refusal.message
    both = refuse(evidence, policy(SGX_POLICY))
    assert ADVISORY_A in both.message
    assert ADVISORY_B in both.message


def test_wildcard_ignores_every_advisory_only_on_a_debug_cas() -> None:
    evidence = sgx(advisories=(ADVISORY_A, ADVISORY_B))
    accept(evidence, policy(SGX_POLICY, ignore=("*",)), cas_debug=True)
    refusal = refuse(evidence, policy(SGX_POLICY, ignore=("*",)), cas_debug=False)
    assert refusal.check == "advisory"
    assert "'*' ignores every advisory only on a CAS in debug mode" in refusal.message
    # Listed ids still count on a production CAS; the wildcard adds nothing there.
    accept(evidence, policy(SGX_POLICY, ignore=("*", ADVISORY_A, ADVISORY_B)), cas_debug=False)


def test_many_advisories_are_listed_briefly() -> None:
    advisories = tuple(f"INTEL-SA-{number:05d}" for number in range(1, 13))
    refusal = refuse(sgx(advisories=advisories), policy(SGX_POLICY))
    assert "INTEL-SA-00005" in refusal.message
    assert "INTEL-SA-00006" not in refusal.message
    assert "and 7 more" in refusal.message


# --- order and discretion ------------------------------------------------------------------------


def test_rules_run_in_their_documented_order() -> None:
    given = policy(SGX_POLICY, platforms=(KEY,))
    evidence = sgx(
        MRENCLAVE_OTHER,
        debug=True,
        platform_key_hash=KEY_OTHER,
        tcb_status="Revoked",
        advisories=(ADVISORY_A,),
    )
    expected = ["debug-mode", "measurement", "platform", "tcb", "advisory"]
    fixes: list[dict[str, Any]] = [
        {"debug": False},
        {"measurement": MRENCLAVE},
        {"platform_key_hash": KEY},
        {"tcb_status": "UpToDate"},
        {"advisories": ()},
    ]
    for check, fix in zip(expected, fixes, strict=True):
        assert refuse(evidence, given).check == check
        evidence = replace(evidence, **fix)
    accept(evidence, given)


def test_mode_comes_before_debug_mode_and_simulated_before_mode() -> None:
    assert refuse(sgx(debug=True), policy(mode="none")).check == "mode"
    assert refuse(simulated(), policy(mode="none")).check == "simulated"


def test_refusals_do_not_mention_other_services() -> None:
    text = "\n".join(
        [
            "name: s",
            "version: '0.3'",
            "services:",
            f"  - name: api\n    attestation: {{mrenclave: {MRENCLAVE}}}",
            f"  - name: db\n    attestation: {{mrenclave: {MRENCLAVE_OTHER}}}",
        ]
    )
    session = parse_session(text + "\n", "t.yaml")
    service = session.service("api")
    assert service is not None
    with pytest.raises(WorkloadRefused) as caught:
        check_workload(sgx(MRENCLAVE_OTHER), service, session.security.attestation, cas_debug=False)
    assert "`db`" not in caught.value.message
    assert MRENCLAVE_OTHER not in caught.value.message
