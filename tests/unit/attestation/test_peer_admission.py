"""admit_peer and check_key_source: who may receive the database key, and whom a key is taken
from; each rule accepted and refused, with the reason naming what the peer showed."""

from __future__ import annotations

from dataclasses import replace

import pytest

from opencas.attestation.evidence import VerifiedEvidence
from opencas.attestation.peer_admission import (
    RegisteredUpgrade,
    SoftwareIdentity,
    admit_peer,
    check_key_source,
)

MRENCLAVE = "a1" * 32
MRENCLAVE_NEW = "a2" * 32
MRSIGNER = "b1" * 32
MRSIGNER_OTHER = "b2" * 32
SIM = "5e" * 32
SIM_OTHER = "6f" * 32


def sgx(measurement: str = MRENCLAVE, **changes: object) -> VerifiedEvidence:
    """Verified SGX evidence of a production enclave, up to date."""
    evidence = VerifiedEvidence(
        platform="sgx-dcap",
        measurement=measurement,
        report_data=bytes(64),
        debug=False,
        platform_key_hash="9a" * 32,
        tcb_status="UpToDate",
        advisories=(),
        mrsigner=MRSIGNER,
        isv_prod_id=7,
        isv_svn=3,
    )
    return replace(evidence, **changes)  # type: ignore[arg-type]


def simulated(measurement: str = SIM) -> VerifiedEvidence:
    return VerifiedEvidence(
        platform="simulated",
        measurement=measurement,
        report_data=bytes(64),
        debug=True,
        platform_key_hash="9b" * 32,
        tcb_status="Simulated",
        advisories=(),
    )


OWN_SGX = SoftwareIdentity.of(sgx())
OWN_SIM = SoftwareIdentity.of(simulated())


def test_the_same_software_is_admitted() -> None:
    decision = admit_peer(sgx(), OWN_SGX)
    assert decision.admitted
    assert decision.basis == "same-software"
    assert admit_peer(simulated(), OWN_SIM).admitted


def test_other_software_is_refused_naming_both_measurements() -> None:
    decision = admit_peer(simulated(SIM_OTHER), OWN_SIM)
    assert not decision.admitted
    assert decision.check == "software"
    assert SIM_OTHER in decision.reason
    assert SIM in decision.reason


def test_another_platform_is_refused() -> None:
    decision = admit_peer(simulated(MRENCLAVE), OWN_SGX)
    assert (decision.admitted, decision.check) == (False, "platform")
    assert "'simulated'" in decision.reason


def test_a_debug_peer_is_refused_by_a_production_cas_only() -> None:
    decision = admit_peer(sgx(debug=True), OWN_SGX)
    assert (decision.admitted, decision.check) == (False, "debug")
    debug_own = replace(OWN_SGX, debug=True)
    assert admit_peer(sgx(debug=True), debug_own).admitted


@pytest.mark.parametrize("status", ["OutOfDate", "SWHardeningNeeded", "Revoked", "Whatever"])
def test_a_worse_tcb_is_refused(status: str) -> None:
    decision = admit_peer(sgx(tcb_status=status), OWN_SGX)
    assert (decision.admitted, decision.check) == (False, "tcb")
    assert status in decision.reason


def test_an_equal_or_better_tcb_is_admitted() -> None:
    outdated_own = replace(OWN_SGX, tcb_status="OutOfDate")
    assert admit_peer(sgx(tcb_status="OutOfDate"), outdated_own).admitted
    assert admit_peer(sgx(tcb_status="UpToDate"), outdated_own).admitted
    # Revoked is never equal: no own status makes it acceptable.
    revoked_own = replace(OWN_SGX, tcb_status="Revoked")
    assert not admit_peer(sgx(tcb_status="Revoked"), revoked_own).admitted


def test_advisories_the_cas_does_not_have_are_refused() -> None:
    decision = admit_peer(sgx(advisories=("INTEL-SA-00001",)), OWN_SGX)
    assert (decision.admitted, decision.check) == (False, "tcb")
    assert "INTEL-SA-00001" in decision.reason
    own = replace(OWN_SGX, advisories=("INTEL-SA-00001",))
    assert admit_peer(sgx(advisories=("INTEL-SA-00001",)), own).admitted


def test_a_registered_upgrade_by_measurement_is_admitted() -> None:
    upgrade = RegisteredUpgrade(measurement=MRENCLAVE_NEW)
    peer = sgx(MRENCLAVE_NEW, isv_svn=4)
    assert not admit_peer(peer, OWN_SGX).admitted
    decision = admit_peer(peer, OWN_SGX, [upgrade])
    assert decision.admitted
    assert decision.basis == "registered-upgrade"
    assert admit_peer(simulated(SIM_OTHER), OWN_SIM, [RegisteredUpgrade(SIM_OTHER)]).admitted


def test_an_upgrade_never_goes_down_in_security_version() -> None:
    peer = sgx(MRENCLAVE_NEW, isv_svn=2)
    decision = admit_peer(peer, OWN_SGX, [RegisteredUpgrade(measurement=MRENCLAVE_NEW)])
    assert (decision.admitted, decision.check) == (False, "security-version")


def test_an_upgrade_of_another_signer_is_refused() -> None:
    peer = sgx(MRENCLAVE_NEW, mrsigner=MRSIGNER_OTHER, isv_svn=9)
    decision = admit_peer(peer, OWN_SGX, [RegisteredUpgrade(measurement=MRENCLAVE_NEW)])
    assert (decision.admitted, decision.check) == (False, "software")
    assert MRSIGNER_OTHER in decision.reason


def test_an_upgrade_in_signer_form_admits_its_security_versions() -> None:
    upgrade = RegisteredUpgrade(mrsigner=MRSIGNER, isv_prod_id=7, min_isv_svn=4)
    assert admit_peer(sgx(MRENCLAVE_NEW, isv_svn=4), OWN_SGX, [upgrade]).admitted
    assert not admit_peer(sgx(MRENCLAVE_NEW, isv_svn=3), OWN_SGX, [upgrade]).admitted
    assert not admit_peer(sgx(MRENCLAVE_NEW, isv_prod_id=8, isv_svn=5), OWN_SGX, [upgrade]).admitted


def test_an_upgrade_names_one_form() -> None:
    with pytest.raises(ValueError, match="either"):
        RegisteredUpgrade()
    with pytest.raises(ValueError, match="either"):
        RegisteredUpgrade(measurement=SIM, mrsigner=MRSIGNER, isv_prod_id=1, min_isv_svn=1)
    with pytest.raises(ValueError, match="needs"):
        RegisteredUpgrade(mrsigner=MRSIGNER)


def test_a_key_is_taken_from_the_same_software_or_its_sgx_family() -> None:
    assert check_key_source(sgx(), OWN_SGX).basis == "same-software"
    older = sgx(MRENCLAVE_NEW, isv_svn=1)
    assert check_key_source(older, OWN_SGX).basis == "same-family"
    assert check_key_source(simulated(), OWN_SIM).admitted


def test_a_key_from_other_software_is_refused() -> None:
    decision = check_key_source(simulated(SIM_OTHER), OWN_SIM)
    assert (decision.admitted, decision.check) == (False, "software")
    assert SIM_OTHER in decision.reason
    other_signer = sgx(MRENCLAVE_NEW, mrsigner=MRSIGNER_OTHER)
    assert check_key_source(other_signer, OWN_SGX).check == "software"


def test_a_key_from_a_debug_or_foreign_platform_is_refused() -> None:
    assert check_key_source(sgx(debug=True), OWN_SGX).check == "debug"
    assert check_key_source(simulated(MRENCLAVE), OWN_SGX).check == "platform"
