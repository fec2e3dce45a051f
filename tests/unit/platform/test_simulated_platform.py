"""The simulated platform: its key file, evidence, sealing and the package measurement."""

from __future__ import annotations

import hashlib
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from opencas.attestation.verify import verify_evidence
from opencas.crypto.envelope import derive_key, seal
from opencas.crypto.pem import private_key_pem
from opencas.errors import PlatformError
from opencas.platform.base import Platform
from opencas.platform.key_file import read_key_file
from opencas.platform.measurement import measure_directory, package_measurement
from opencas.platform.simulated import SimulatedPlatform

MEASUREMENT = "9a" * 32


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_key_file_is_created_private(tmp_path: Path) -> None:
    key_file = tmp_path / "state" / "platform-key.pem"
    platform = SimulatedPlatform.load_or_create(key_file, MEASUREMENT)
    assert mode_of(key_file) == 0o600
    assert mode_of(key_file.parent) == 0o700
    assert key_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert [p.name for p in key_file.parent.iterdir()] == [key_file.name]
    assert platform.kind == "simulated"
    assert platform.debug is True
    assert platform.measurement == MEASUREMENT
    assert platform.key_file == key_file
    assert isinstance(platform, Platform)


def test_key_file_is_reused(tmp_path: Path) -> None:
    key_file = tmp_path / "platform-key.pem"
    first = SimulatedPlatform.load_or_create(key_file, MEASUREMENT)
    content = key_file.read_bytes()
    second = SimulatedPlatform.load_or_create(key_file, MEASUREMENT)
    third = SimulatedPlatform(key_file, MEASUREMENT)
    assert key_file.read_bytes() == content
    assert first.platform_key_hash == second.platform_key_hash == third.platform_key_hash


def test_missing_key_file_without_create(tmp_path: Path) -> None:
    key_file = tmp_path / "absent.pem"
    with pytest.raises(PlatformError, match="does not exist"):
        SimulatedPlatform(key_file, MEASUREMENT)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_key_file_accessible_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    key_file = tmp_path / "platform-key.pem"
    SimulatedPlatform.load_or_create(key_file, MEASUREMENT)
    key_file.chmod(mode)
    with pytest.raises(PlatformError, match="chmod 600") as info:
        SimulatedPlatform.load_or_create(key_file, MEASUREMENT)
    assert str(key_file) in info.value.message


def test_owner_read_only_key_file_is_accepted(tmp_path: Path) -> None:
    key_file = tmp_path / "platform-key.pem"
    created = SimulatedPlatform.load_or_create(key_file, MEASUREMENT)
    key_file.chmod(0o400)
    loaded = SimulatedPlatform.load_or_create(key_file, MEASUREMENT)
    assert loaded.platform_key_hash == created.platform_key_hash


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not a key",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        private_key_pem(ec.generate_private_key(ec.SECP256R1())),
        b"x" * 100_000,
    ],
)
def test_corrupt_key_file_is_refused(tmp_path: Path, content: bytes) -> None:
    key_file = tmp_path / "platform-key.pem"
    key_file.write_bytes(content)
    key_file.chmod(0o600)
    with pytest.raises(PlatformError, match="is corrupt") as info:
        SimulatedPlatform.load_or_create(key_file, MEASUREMENT)
    assert str(key_file) in info.value.message
    assert key_file.read_bytes() == content


def test_key_file_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "platform-key.pem"
    key_file.mkdir(mode=0o700)
    with pytest.raises(PlatformError, match=str(key_file)):
        SimulatedPlatform.load_or_create(key_file, MEASUREMENT)


def test_bad_measurement_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="measurement"):
        SimulatedPlatform.load_or_create(tmp_path / "key.pem", "NOT-HEX")
    assert not (tmp_path / "key.pem").exists()


def test_evidence_verifies(tmp_path: Path) -> None:
    platform = SimulatedPlatform.load_or_create(tmp_path / "key.pem", MEASUREMENT)
    report_data = os.urandom(64)
    verified = verify_evidence(platform.evidence(report_data), at=datetime.now(UTC))
    assert verified.report_data == report_data
    assert verified.measurement == MEASUREMENT
    assert verified.debug is True
    assert verified.platform == platform.kind
    assert verified.platform_key_hash == platform.platform_key_hash
    with pytest.raises(ValueError, match="64 bytes"):
        platform.evidence(b"short")


def test_evidence_states_the_operators_security_version(tmp_path: Path) -> None:
    plain = SimulatedPlatform.load_or_create(tmp_path / "key.pem", MEASUREMENT)
    versioned = SimulatedPlatform.load_or_create(
        tmp_path / "key.pem", MEASUREMENT, security_version=2
    )
    now = datetime.now(UTC)
    assert verify_evidence(plain.evidence(bytes(64)), at=now).isv_svn is None
    # A version of 0 is the evidence it always was: the field is left out.
    assert b"security_version" not in plain.evidence(bytes(64)).data
    assert verify_evidence(versioned.evidence(bytes(64)), at=now).isv_svn == 2
    with pytest.raises(ValueError, match="security version"):
        SimulatedPlatform.load_or_create(tmp_path / "key.pem", MEASUREMENT, security_version=65536)


def test_seal_round_trip(tmp_path: Path) -> None:
    platform = SimulatedPlatform.load_or_create(tmp_path / "key.pem", MEASUREMENT)
    secret = b"database master key \x00\xff"
    sealed = platform.seal(secret)
    assert secret not in sealed
    assert platform.seal(secret) != sealed
    assert platform.unseal(sealed) == secret
    reloaded = SimulatedPlatform(tmp_path / "key.pem", MEASUREMENT)
    assert reloaded.unseal(sealed) == secret
    assert platform.unseal(platform.seal(b"")) == b""


def test_unseal_with_another_platform_key_fails(tmp_path: Path) -> None:
    one = SimulatedPlatform.load_or_create(tmp_path / "one.pem", MEASUREMENT)
    other = SimulatedPlatform.load_or_create(tmp_path / "other.pem", MEASUREMENT)
    with pytest.raises(PlatformError) as caught:
        other.unseal(one.seal(b"secret"))
    assert f"sealed on simulated machine {one.machine_id}" in str(caught.value)
    assert f"this is machine {other.machine_id}" in str(caught.value)


def test_a_forged_machine_id_does_not_open_another_machines_seal(tmp_path: Path) -> None:
    # The id is bound as AAD: relabelling data as this machine's does not make it open here.
    one = SimulatedPlatform.load_or_create(tmp_path / "one.pem", MEASUREMENT)
    other = SimulatedPlatform.load_or_create(tmp_path / "other.pem", MEASUREMENT)
    sealed = one.seal(b"secret")
    relabelled = sealed[:1] + bytes.fromhex(other.machine_id) + sealed[33:]
    with pytest.raises(PlatformError, match="cannot unseal: damaged"):
        other.unseal(relabelled)


def test_data_sealed_before_seals_named_the_machine_still_opens(tmp_path: Path) -> None:
    platform = SimulatedPlatform.load_or_create(tmp_path / "key.pem", MEASUREMENT)
    key = read_key_file(tmp_path / "key.pem")
    legacy = seal(
        derive_key(key.private_bytes_raw(), "simulated-seal"), b"dmk", b"opencas-simulated-seal/v1"
    )
    assert platform.unseal(legacy) == b"dmk"


def test_sealing_to_the_measurement_opens_for_that_build_only(tmp_path: Path) -> None:
    key_file = tmp_path / "k.pem"
    old = SimulatedPlatform.load_or_create(key_file, MEASUREMENT, sealing="measurement")
    sealed = old.seal(b"dmk")
    assert sealed[0] == 0x03
    # The same build opens it whatever it seals with; another build on the machine never.
    assert SimulatedPlatform(key_file, MEASUREMENT).unseal(sealed) == b"dmk"
    new = SimulatedPlatform(key_file, "ab" * 32, sealing="measurement")
    with pytest.raises(PlatformError) as caught:
        new.unseal(sealed)
    assert f"sealed to the build with measurement {MEASUREMENT}" in str(caught.value)
    assert "ab" * 32 in str(caught.value)
    # What a build seals to the machine alone every build there opens.
    assert new.unseal(SimulatedPlatform(key_file, MEASUREMENT).seal(b"x")) == b"x"
    assert "measurement" in old.key_protection
    assert "measurement" not in SimulatedPlatform(key_file, MEASUREMENT).key_protection


def test_a_relabelled_measurement_does_not_open_another_builds_seal(tmp_path: Path) -> None:
    key_file = tmp_path / "k.pem"
    sealed = SimulatedPlatform.load_or_create(key_file, MEASUREMENT, sealing="measurement").seal(
        b"dmk"
    )
    other = "ab" * 32
    relabelled = sealed[:34] + bytes.fromhex(other) + sealed[34 + 32 :]
    with pytest.raises(PlatformError, match="cannot unseal: damaged"):
        SimulatedPlatform(key_file, other).unseal(relabelled)
    for cut in (33, 34, 40):
        with pytest.raises(PlatformError, match="truncated"):
            SimulatedPlatform(key_file, MEASUREMENT).unseal(sealed[:cut])


def test_an_unknown_sealing_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="machine, measurement"):
        SimulatedPlatform.load_or_create(tmp_path / "k.pem", MEASUREMENT, sealing="cpu")  # type: ignore[arg-type]


def test_each_machine_has_its_own_id_in_its_evidence(tmp_path: Path) -> None:
    one = SimulatedPlatform.load_or_create(tmp_path / "one" / "platform.key", MEASUREMENT)
    other = SimulatedPlatform.load_or_create(tmp_path / "other" / "platform.key", MEASUREMENT)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    seen = [
        verify_evidence(platform.evidence(b"\x00" * 64), at=at).platform_id["machine_id"]
        for platform in (one, other)
    ]
    assert seen == [one.machine_id, other.machine_id]
    assert one.machine_id != other.machine_id


@pytest.mark.parametrize("damage", ["flip-first", "flip-last", "truncate", "empty"])
def test_unseal_of_damaged_data_fails(tmp_path: Path, damage: str) -> None:
    platform = SimulatedPlatform.load_or_create(tmp_path / "key.pem", MEASUREMENT)
    sealed = bytearray(platform.seal(b"secret"))
    if damage == "flip-first":
        sealed[0] ^= 0x01
    elif damage == "flip-last":
        sealed[-1] ^= 0x01
    elif damage == "truncate":
        del sealed[10:]
    else:
        sealed.clear()
    with pytest.raises(PlatformError, match="cannot unseal"):
        platform.unseal(bytes(sealed))


def _tree(root: Path) -> Path:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("x = 1\n")
    (root / "pkg" / "sub" / "mod.py").write_text("y = 2\n")
    (root / "pkg" / "data.txt").write_bytes(b"\x00\x01")
    return root / "pkg"


def test_measurement_is_deterministic_and_ignores_bytecode(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    first = measure_directory(root)
    assert len(first) == 64
    assert measure_directory(root) == first
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"bytecode")
    (root / "sub" / "__pycache__").mkdir()
    (root / "sub" / "__pycache__" / "anything.txt").write_bytes(b"cache")
    (root / "stray.pyc").write_bytes(b"bytecode")
    assert measure_directory(root) == first


def test_measurement_changes_when_a_file_changes(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    first = measure_directory(root)
    (root / "sub" / "mod.py").write_text("y = 3\n")
    second = measure_directory(root)
    assert second != first
    (root / "sub" / "mod.py").write_text("y = 2\n")
    assert measure_directory(root) == first
    (root / "sub" / "mod.py").rename(root / "sub" / "moved.py")
    assert measure_directory(root) != first
    (root / "sub" / "moved.py").rename(root / "sub" / "mod.py")
    (root / "new.py").write_text("")
    assert measure_directory(root) != first


def test_measurement_format(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    (root / "b").mkdir(parents=True)
    (root / "b" / "z.py").write_bytes(b"zz")
    (root / "a.py").write_bytes(b"")
    (root / "b.txt").write_bytes(b"hello")
    stream = b"a.py\x000\x00" + b"b.txt\x005\x00hello" + b"b/z.py\x002\x00zz"
    assert measure_directory(root) == hashlib.sha256(stream).hexdigest()


def test_package_measurement_is_cached_per_root(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    first = package_measurement(root)
    (root / "sub" / "mod.py").write_text("changed\n")
    assert package_measurement(root) == first
    assert measure_directory(root) != first


def test_package_measurement_of_opencas(tmp_path: Path) -> None:
    value = package_measurement()
    assert len(value) == 64
    assert package_measurement() == value
    SimulatedPlatform.load_or_create(tmp_path / "key.pem", value)


def test_measurement_of_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(PlatformError, match="not a directory"):
        measure_directory(tmp_path / "absent")


def test_concurrent_creation_yields_one_key(tmp_path: Path) -> None:
    key_file = tmp_path / "platform-key.pem"
    with ThreadPoolExecutor(max_workers=8) as pool:
        platforms = list(
            pool.map(lambda _: SimulatedPlatform.load_or_create(key_file, MEASUREMENT), range(16))
        )
    assert len({platform.platform_key_hash for platform in platforms}) == 1
    assert [p.name for p in tmp_path.iterdir()] == [key_file.name]
