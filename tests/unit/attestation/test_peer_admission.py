"""admit_peer, admit_build and check_key_source: who may receive the database key, which build
may serve a database it opened, and whom a key is taken from; each rule accepted and refused,
with the reason naming what the peer showed."""

from __future__ import annotations

from dataclasses import replace

import pytest

from opencas.attestation.evidence import VerifiedEvidence
from opencas.attestation.peer_admission import (
    RegisteredUpgrade,
    SoftwareIdentity,
    admit_backup,
    admit_build,
    admit_peer,
    admitting_as,
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


def simulated(measurement: str = SIM, security_version: int | None = None) -> VerifiedEvidence:
    return VerifiedEvidence(
        platform="simulated",
        measurement=measurement,
        report_data=bytes(64),
        debug=True,
        platform_key_hash="9b" * 32,
        tcb_status="Simulated",
        advisories=(),
        isv_svn=security_version,
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


def test_a_key_is_taken_from_a_build_this_one_names_as_its_predecessor() -> None:
    older = simulated(SIM_OTHER)
    assert not check_key_source(older, OWN_SIM).admitted
    decision = check_key_source(older, OWN_SIM, predecessors=(SIM_OTHER,))
    assert (decision.admitted, decision.basis) == (True, "predecessor")
    # Naming a predecessor does not open the platform checks.
    assert check_key_source(sgx(debug=True), OWN_SGX, (MRENCLAVE,)).check == "debug"
    assert check_key_source(simulated("77" * 32), OWN_SIM, (SIM_OTHER,)).check == "software"


def test_an_upgrade_id_names_the_registration_and_nothing_else() -> None:
    by_measurement = RegisteredUpgrade(measurement=SIM)
    assert by_measurement.upgrade_id == RegisteredUpgrade(measurement=SIM).upgrade_id
    assert len(by_measurement.upgrade_id) == 16
    ids = {
        by_measurement.upgrade_id,
        RegisteredUpgrade(measurement=SIM_OTHER).upgrade_id,
        RegisteredUpgrade(mrsigner=MRSIGNER, isv_prod_id=7, min_isv_svn=4).upgrade_id,
        RegisteredUpgrade(mrsigner=MRSIGNER, isv_prod_id=7, min_isv_svn=5).upgrade_id,
        RegisteredUpgrade(mrsigner=MRSIGNER, isv_prod_id=74, min_isv_svn=5).upgrade_id,
    }
    assert len(ids) == 5
    assert SIM in by_measurement.describe()


SERVING_SGX = SoftwareIdentity("sgx-dcap", MRENCLAVE, False, "", (), MRSIGNER, 7, 3)


def test_a_build_that_opened_the_database_serves_as_itself_or_a_registered_upgrade() -> None:
    new_sim = SoftwareIdentity.of(simulated(SIM_OTHER))
    assert admit_build(OWN_SIM, OWN_SIM).basis == "same-software"
    refused = admit_build(new_sim, OWN_SIM)
    assert (refused.admitted, refused.check) == (False, "software")
    assert SIM_OTHER in refused.reason
    assert SIM in refused.reason
    assert "casctl register-upgrade" in refused.reason
    admitted = admit_build(new_sim, OWN_SIM, [RegisteredUpgrade(measurement=SIM_OTHER)])
    assert (admitted.admitted, admitted.basis) == (True, "registered-upgrade")
    elsewhere = admit_build(OWN_SGX, OWN_SIM, [RegisteredUpgrade(measurement=MRENCLAVE)])
    assert (elsewhere.admitted, elsewhere.check) == (False, "platform")


def test_an_sgx_build_takes_over_only_from_its_signer_at_no_lower_security_version() -> None:
    upgrade = [RegisteredUpgrade(measurement=MRENCLAVE_NEW)]
    newer = SoftwareIdentity.of(sgx(MRENCLAVE_NEW, isv_svn=4))
    assert admit_build(newer, SERVING_SGX, upgrade).admitted
    lower = SoftwareIdentity.of(sgx(MRENCLAVE_NEW, isv_svn=2))
    assert admit_build(lower, SERVING_SGX, upgrade).check == "security-version"
    other = SoftwareIdentity.of(sgx(MRENCLAVE_NEW, mrsigner=MRSIGNER_OTHER, isv_svn=4))
    assert admit_build(other, SERVING_SGX, upgrade).check == "software"
    # A build whose signer is unknown (its evidence did not verify) fails the signer check.
    unverified = SoftwareIdentity("sgx-dcap", MRENCLAVE_NEW, False, "")
    assert not admit_build(unverified, SERVING_SGX, upgrade).admitted


def test_a_backup_of_the_same_family_at_an_equal_or_higher_security_version_is_admitted() -> None:
    assert admit_backup(sgx(), OWN_SGX).basis == "same-software"
    newer = admit_backup(sgx(MRENCLAVE_NEW, isv_svn=4), OWN_SGX)
    assert (newer.admitted, newer.basis) == (True, "same-family")
    assert admit_backup(simulated(), OWN_SIM).admitted


def test_a_backup_with_a_lower_security_version_is_refused() -> None:
    for peer in (sgx(MRENCLAVE_NEW, isv_svn=2), sgx(isv_svn=2)):
        decision = admit_backup(peer, OWN_SGX)
        assert (decision.admitted, decision.check) == (False, "security-version")
        assert "security version 2 is below this CAS's 3" in decision.reason


def test_a_simulated_backup_below_the_primarys_security_version_is_refused() -> None:
    own = SoftwareIdentity.of(simulated(security_version=2))
    for lower in (None, 1):
        decision = admit_backup(simulated(security_version=lower), own)
        assert (decision.admitted, decision.check) == (False, "security-version")
        assert f"security version {lower or 0} is below this CAS's 2" in decision.reason
    for equal_or_higher in (2, 3):
        assert admit_backup(simulated(security_version=equal_or_higher), own).admitted
    # A primary without a version admits a backup at any.
    assert admit_backup(simulated(security_version=1), OWN_SIM).admitted


@pytest.mark.parametrize(
    ("peer", "own", "check"),
    [
        (sgx(MRENCLAVE_NEW, mrsigner=MRSIGNER_OTHER, isv_svn=9), OWN_SGX, "software"),
        (sgx(MRENCLAVE_NEW, isv_prod_id=8, isv_svn=9), OWN_SGX, "software"),
        (sgx(tcb_status="OutOfDate"), OWN_SGX, "tcb"),
        (sgx(debug=True), OWN_SGX, "debug"),
        (simulated(SIM_OTHER), OWN_SIM, "software"),
        (simulated(), OWN_SGX, "platform"),
    ],
)
def test_a_backup_of_other_software_a_worse_tcb_or_debug_is_refused(
    peer: VerifiedEvidence, own: SoftwareIdentity, check: str
) -> None:
    decision = admit_backup(peer, own)
    assert (decision.admitted, decision.check) == (False, check)


def test_after_another_build_took_over_a_peer_of_this_instances_own_build_is_refused() -> None:
    serving = SoftwareIdentity.of(sgx(MRENCLAVE_NEW, isv_svn=4))
    checked = admitting_as(OWN_SGX, serving)
    # This instance's mode and TCB stay; the software is the serving build's.
    assert (checked.measurement, checked.isv_svn) == (MRENCLAVE_NEW, 4)
    assert (checked.debug, checked.tcb_status) == (OWN_SGX.debug, OWN_SGX.tcb_status)
    refused = admit_peer(sgx(), checked)
    assert not refused.admitted
    assert refused.check == "software"
    assert admit_peer(sgx(MRENCLAVE_NEW, isv_svn=4), checked).basis == "same-software"
    # Nothing recorded, or this build recorded: checked as itself.
    assert admitting_as(OWN_SGX, None) is OWN_SGX
    assert admitting_as(OWN_SGX, SoftwareIdentity.of(sgx())) is OWN_SGX
