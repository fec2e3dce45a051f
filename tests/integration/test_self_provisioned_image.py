"""The container images, run without Docker: each image's CMD, with its files mapped to a temp dir.

The self-provisioned example's CMD is read from its Dockerfile, not written down here, so that
this test runs what the image runs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

from opencas.config.availability import load_availability_config
from opencas.config.owner import load_owner_config
from opencas.config.owner_identity import load_owner_certificate
from opencas.testing import CasProcess, cas_command, run_casctl

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "self-provisioned"
IMAGE_CONFIG_DIR = PurePosixPath("/etc/cas")
STATE_DIR = PurePosixPath("/var/lib/cas")


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        result.append((keyword.upper(), arguments.strip()))
        pending = ""
    return result


def last(dockerfile: Path, keyword: str) -> str:
    found = [arguments for name, arguments in instructions(dockerfile) if name == keyword]
    assert found, f"{dockerfile} has no {keyword}"
    return found[-1]


def cmd_of(dockerfile: Path) -> list[str]:
    """The last CMD, which must be in exec (JSON array) form."""
    argv = json.loads(last(dockerfile, "CMD"))
    assert isinstance(argv, list)
    assert all(isinstance(arg, str) for arg in argv)
    return argv


def added_files(dockerfile: Path) -> dict[str, str]:
    """What ADD and COPY put into /etc/cas/: image file name -> source in the build context."""
    files: dict[str, str] = {}
    for keyword, arguments in instructions(dockerfile):
        if keyword not in {"ADD", "COPY"}:
            continue
        words = [word for word in arguments.split() if not word.startswith("--")]
        *sources, destination = words
        if destination.endswith("/"):
            files.update({PurePosixPath(s).name: s for s in sources if destination == "/etc/cas/"})
        elif PurePosixPath(destination).parent == IMAGE_CONFIG_DIR:
            files[PurePosixPath(destination).name] = sources[0]
    return files


def test_self_provisioned_image_cmd_provisions_once_and_attests(tmp_path: Path) -> None:
    dockerfile = EXAMPLE / "Dockerfile"
    argv = cmd_of(dockerfile)
    assert argv[0] == "cas"
    assert "--skip-if-already-provisioned" in argv
    added = added_files(dockerfile)
    assert set(added) == {"availability-config.toml", "owner-config.toml", "owner-certificate.pem"}
    for source in added.values():
        assert (EXAMPLE / source).is_file(), source

    # The files the image has in /etc/cas, made here: the CAS's config on free ports, the
    # example's owner config, and a fresh owner identity in place of the example's certificate.
    cas = CasProcess(tmp_path / "cas")
    owner_home = tmp_path / "owner"
    created = run_casctl(owner_home, ["self", "show-identity"])
    assert created.returncode == 0, created.stderr
    etc = tmp_path / "etc-cas"
    etc.mkdir()
    shutil.copyfile(EXAMPLE / added["owner-config.toml"], etc / "owner-config.toml")
    shutil.copyfile(owner_home / "identity-cert.pem", etc / "owner-certificate.pem")
    local = {
        "availability-config.toml": cas.config_path,
        "owner-config.toml": etc / "owner-config.toml",
        "owner-certificate.pem": etc / "owner-certificate.pem",
    }

    def mapped(arg: str) -> str:
        path = PurePosixPath(arg)
        if path.parent != IMAGE_CONFIG_DIR:
            assert not arg.startswith(f"{IMAGE_CONFIG_DIR}/"), arg
            return arg
        assert path.name in local, f"the CMD names {arg}, which this test does not provide"
        return str(local[path.name])

    command = cas_command(*(mapped(arg) for arg in argv[1:]))
    client_home = tmp_path / "client"
    attest = [
        "attest",
        cas.url,
        "--only-for-testing-debug",
        "--expect-owner-identity",
        str(local["owner-certificate.pem"]),
        "--expect-owner-config",
        str(local["owner-config.toml"]),
        "--json",
    ]
    try:
        cas.start_command(command)
        first = run_casctl(client_home, attest)
        assert first.returncode == 0, first.stderr
        facts = json.loads(first.stdout)
        assert facts["provisioned"] is True
        assert facts["self_provisioned"] is True
        assert facts["owner_identity_checked"] is True
        assert facts["owner_config_checked"] is True
        assert "self-provisioned from files" in cas.log()
        assert cas.stop() == 0

        # The container starts again with the same CMD: provisioning is skipped.
        logged_before = len(cas.log())
        cas.start_command(command)
        second = run_casctl(client_home, attest)
        assert second.returncode == 0, second.stderr
        again = json.loads(second.stdout)
        assert again["provisioned_at"] == facts["provisioned_at"]
        assert again["instance_id"] == facts["instance_id"]
        assert again["owner_config_sha256"] == facts["owner_config_sha256"]
        restart_log = cas.log()[logged_before:]
        assert "given owner identity and config match" in restart_log
        assert "self-provisioned from files" not in restart_log
        assert cas.stop() == 0
    finally:
        cas.stop()


def test_main_image_serves_from_its_availability_config() -> None:
    dockerfile = ROOT / "Dockerfile"
    assert cmd_of(dockerfile) == ["cas", "-c", "/etc/cas/availability-config.toml", "serve"]
    assert added_files(dockerfile) == {
        "availability-config.toml": "docker/availability-config.toml"
    }
    assert set(last(dockerfile, "EXPOSE").split()) == {"8081", "18765"}
    assert last(dockerfile, "USER").split(":")[0] not in {"root", "0"}
    assert "/var/lib/cas" in last(dockerfile, "VOLUME")

    config = load_availability_config(ROOT / "docker" / "availability-config.toml")
    assert config.database_path == Path(STATE_DIR / "cas.db")
    assert config.platform_key_file.parent == Path(STATE_DIR)
    assert config.platform_kind == "simulated"
    assert str(config.api_listen) == "0.0.0.0:8081"
    assert str(config.enclave_listen) == "0.0.0.0:18765"


def test_self_provisioned_example_files_are_valid() -> None:
    config = load_availability_config(EXAMPLE / "availability-config.toml")
    assert config.database_path.parent == Path(STATE_DIR)  # in the volume
    assert config.platform_key_file.parent == Path(STATE_DIR)
    assert load_owner_config(EXAMPLE / "owner-config.toml").config.api_identity is not None
    # The example certificate is a real owner certificate, valid now.
    assert load_owner_certificate(EXAMPLE / "owner-certificate.pem").key_hash


def test_main_image_healthcheck_answers_a_serving_cas(cas: CasProcess) -> None:
    """The HEALTHCHECK's python command succeeds against a serving CAS."""
    healthcheck = json.loads(last(ROOT / "Dockerfile", "HEALTHCHECK").partition("CMD")[2])
    assert healthcheck[:2] == ["python", "-c"]
    code = healthcheck[2].replace("127.0.0.1:8081", f"127.0.0.1:{cas.api_port}")
    assert code != healthcheck[2]
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    cas.stop()
    down = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert down.returncode != 0
