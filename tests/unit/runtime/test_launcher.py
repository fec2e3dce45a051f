"""Launching a workload: the plan (argv, environment, files, pwd) and the running child."""

from __future__ import annotations

import os
import signal
import stat
import sys
import tempfile
from dataclasses import replace
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from opencas.attestation.workload_binding import ConfigId
from opencas.client.enclave import InjectionFile, IssuedCertificate, WorkloadConfig
from opencas.crypto.keys import key_hash
from opencas.crypto.pem import load_private_key_pem
from opencas.errors import ClientError
from opencas.runtime.launcher import (
    SI_KERNEL,
    LaunchPlan,
    exit_status,
    launch,
    parse_permission,
    path_mapper,
    plan_launch,
    private_relative,
    remove_private_directory,
    run_plan,
    should_forward,
    write_private_files,
)
from opencas.runtime.measure import ResolvedProgram, resolve_program

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
PARENT_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/home/me",
    "LANG": "C.UTF-8",
    "SECRET_OF_THE_USER": "do not pass",
    "EXTRA": "passed on request",
}


def config(**changes: Any) -> WorkloadConfig:
    base = WorkloadConfig(
        config_id=ConfigId("s", "svc"),
        session_hash="00" * 32,
        command=(),
        environment=MappingProxyType({}),
        pwd=None,
        injection_files=(),
        certificates=MappingProxyType({}),
    )
    for name in ("environment", "certificates"):
        if name in changes:
            changes[name] = MappingProxyType(changes[name])
    return replace(base, **changes)


def make_executable(path: Path, content: bytes = b"#!/bin/sh\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    path.chmod(0o755)
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    directory = tmp_path / "private"
    directory.mkdir(mode=0o700)
    return directory


@pytest.fixture
def tool(tmp_path: Path) -> ResolvedProgram:
    return resolve_program([str(make_executable(tmp_path / "bin" / "tool"))])


def plan(
    workload: WorkloadConfig,
    program: ResolvedProgram,
    argv: list[str],
    root: Path,
    **options: Any,
) -> LaunchPlan:
    options.setdefault("parent_environment", PARENT_ENV)
    return plan_launch(workload, program, argv, root, **options)


# --- arguments -----------------------------------------------------------------------------


def test_user_arguments_when_the_session_has_no_command(tool: ResolvedProgram, root: Path) -> None:
    result = plan(config(), tool, ["tool", "--flag", "x"], root)
    assert result.executable == tool.executable
    assert result.argv == (str(tool.executable), "--flag", "x")
    assert result.cwd is None
    assert result.files == ()


def test_session_command_replaces_the_user_arguments(tool: ResolvedProgram, root: Path) -> None:
    result = plan(config(command=("tool", "--from-session")), tool, ["tool", "--mine"], root)
    assert result.argv == (str(tool.executable), "--from-session")


def test_session_command_may_name_the_executable_by_path(
    tmp_path: Path, tool: ResolvedProgram, root: Path
) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(tool.executable)
    result = plan(config(command=(str(alias), "x")), tool, [str(tool.executable)], root)
    assert result.argv[1:] == ("x",)


def test_session_running_another_program_is_refused(tool: ResolvedProgram, root: Path) -> None:
    with pytest.raises(ClientError, match=r"the session runs /usr/bin/other, not tool"):
        plan(config(command=("/usr/bin/other", "x")), tool, ["tool"], root)


def test_argv0_keeps_the_invoked_name(tmp_path: Path, root: Path) -> None:
    real = make_executable(tmp_path / "real" / "tool-1.0")
    (tmp_path / "tool").symlink_to(real)
    program = resolve_program([str(tmp_path / "tool")])
    result = plan(config(command=("tool",)), program, [str(tmp_path / "tool")], root)
    assert result.executable == real
    assert result.argv == (str(tmp_path / "tool"),)


# --- interpreters ----------------------------------------------------------------------------


@pytest.fixture
def python(tmp_path: Path) -> Path:
    return make_executable(tmp_path / "bin" / "python3")


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "app" / "main.py"
    path.parent.mkdir(parents=True)
    path.write_text("print('measured')\n")
    return path


def test_measured_script_runs(python: Path, script: Path, root: Path) -> None:
    program = resolve_program([str(python), str(script)])
    result = plan(
        config(command=("python3", "-u", str(script), "arg")), program, [str(python)], root
    )
    assert result.argv == (str(python), "-u", str(script), "arg")


def test_relative_script_is_found_in_pwd(python: Path, script: Path, root: Path) -> None:
    program = resolve_program([str(python), str(script)])
    workload = config(command=("python3", "main.py"), pwd=str(script.parent))
    assert plan(workload, program, [str(python)], root).cwd == script.parent


def test_pwd_changes_what_a_relative_script_means(
    tmp_path: Path, python: Path, script: Path, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(script.parent)
    program = resolve_program([str(python), "main.py"])
    other = tmp_path / "srv"
    other.mkdir()
    (other / "main.py").write_text("print('not measured')\n")
    with pytest.raises(ClientError, match=r"but .*main.py was measured"):
        plan(config(pwd=str(other)), program, [str(python), "main.py"], root)


def test_another_script_is_refused(tmp_path: Path, python: Path, script: Path, root: Path) -> None:
    other = tmp_path / "other.py"
    other.write_text("print('other')\n")
    program = resolve_program([str(python), str(script)])
    with pytest.raises(
        ClientError, match=r"runs the script .*other.py, but .*main.py was measured"
    ):
        plan(config(command=("python3", str(other))), program, [str(python)], root)


def test_unmeasured_script_is_refused(python: Path, script: Path, root: Path) -> None:
    program = resolve_program([str(python), "-c", "pass"])
    with pytest.raises(ClientError, match="which was not measured"):
        plan(config(command=("python3", str(script))), program, [str(python)], root)


def test_measured_script_that_does_not_run_is_refused(
    python: Path, script: Path, root: Path
) -> None:
    program = resolve_program([str(python), str(script)])
    with pytest.raises(ClientError, match="do not run the measured script"):
        plan(config(command=("python3", "-c", "print(1)")), program, [str(python)], root)
    with pytest.raises(ClientError, match="without a script"):
        plan(config(command=("python3", "-u")), program, [str(python)], root)


def test_inline_code_without_a_measured_script(python: Path, root: Path) -> None:
    program = resolve_program([str(python), "-c", "pass"])
    result = plan(config(command=("python3", "-c", "print(1)")), program, [str(python)], root)
    assert result.argv[1:] == ("-c", "print(1)")


def test_long_inline_code(python: Path, root: Path) -> None:
    code = "x = 1;" * 200
    program = resolve_program([str(python), "-c", code])
    assert plan(config(command=("python3", "-c", code)), program, [str(python)], root).argv[2] == (
        code
    )


def test_injected_script_is_refused(python: Path, script: Path, root: Path) -> None:
    program = resolve_program([str(python), str(script)])
    workload = config(
        command=("python3", "/app/main.py"),
        injection_files=(InjectionFile("/app/main.py", b"print('injected')", None),),
    )
    with pytest.raises(ClientError, match="injected file"):
        plan(workload, program, [str(python)], root)


# --- injection files -------------------------------------------------------------------------


def test_injection_paths_are_mapped_in_arguments_and_environment(
    tool: ResolvedProgram, root: Path
) -> None:
    workload = config(
        command=("tool", "--config=/etc/app/conf", "/etc/app/conf.d/x", "/opt/etc/app/conf"),
        environment={
            "CONF": "/etc/app/conf",
            "BOTH": "/etc/app/conf:/etc/app/conf.d/x",
            "BACKUP": "/etc/app/conf.bak",
            "PLAIN": "value",
        },
        injection_files=(
            InjectionFile("/etc/app/conf", b"a", None),
            InjectionFile("/etc/app/conf.d/x", b"b", "0640"),
        ),
    )
    result = plan(workload, tool, ["tool"], root)
    conf, x = f"{root}/etc/app/conf", f"{root}/etc/app/conf.d/x"
    assert result.argv[1:] == (f"--config={conf}", x, "/opt/etc/app/conf")
    assert result.environment["CONF"] == conf
    assert result.environment["BOTH"] == f"{conf}:{x}"
    assert result.environment["BACKUP"] == "/etc/app/conf.bak"
    assert result.environment["PLAIN"] == "value"
    assert [(f.relative, f.content, f.mode) for f in result.files] == [
        (PurePosixPath("etc/app/conf"), b"a", 0o600),
        (PurePosixPath("etc/app/conf.d/x"), b"b", 0o640),
    ]


def test_user_arguments_are_mapped_too(tool: ResolvedProgram, root: Path) -> None:
    workload = config(injection_files=(InjectionFile("/etc/app/conf", b"a", None),))
    result = plan(workload, tool, ["tool", "/etc/app/conf"], root)
    assert result.argv[1:] == (f"{root}/etc/app/conf",)


def test_mapping_replaces_each_occurrence_once(tmp_path: Path) -> None:
    # The private path of /a ends with "/a": it must not be mapped again.
    mapped = path_mapper(tmp_path, ["/a", f"{tmp_path}/a"])
    assert mapped("/a /a") == f"{tmp_path}/a {tmp_path}/a"
    assert path_mapper(tmp_path, [])("/a") == "/a"


@pytest.mark.parametrize("path", ["relative/x", "/etc/../x", "/etc/./x", "/etc//x", "/", "/x/"])
def test_bad_injection_paths_are_refused(path: str) -> None:
    with pytest.raises(ClientError, match="must be absolute"):
        private_relative(path)


def test_bad_injection_path_in_a_config(tool: ResolvedProgram, root: Path) -> None:
    workload = config(injection_files=(InjectionFile("/etc/../../x", b"", None),))
    with pytest.raises(ClientError, match="must be absolute"):
        plan(workload, tool, ["tool"], root)


@pytest.mark.parametrize(
    ("permission", "mode"), [(None, 0o600), ("0600", 0o600), ("0444", 0o444), ("0750", 0o750)]
)
def test_permissions(permission: str | None, mode: int) -> None:
    assert parse_permission(permission) == mode


@pytest.mark.parametrize("permission", ["600", "0o600", "4755", "0800", "", "rw-------"])
def test_bad_permissions(permission: str) -> None:
    with pytest.raises(ClientError, match="not like 0600"):
        parse_permission(permission)


def test_a_file_cannot_be_a_directory(tool: ResolvedProgram, root: Path) -> None:
    workload = config(
        injection_files=(InjectionFile("/a", b"", None), InjectionFile("/a/b", b"", None))
    )
    with pytest.raises(ClientError, match="/a would have to be a directory"):
        plan(workload, tool, ["tool"], root)


def test_pwd_in_injected_directory(tool: ResolvedProgram, root: Path) -> None:
    files = (InjectionFile("/srv/app/conf", b"", None),)
    mapped = plan(config(pwd="/srv", injection_files=files), tool, ["tool"], root)
    assert mapped.cwd == root / "srv"
    assert plan(config(pwd="/srv/app", injection_files=files), tool, ["tool"], root).cwd == (
        root / "srv" / "app"
    )
    assert plan(config(pwd="/tmp", injection_files=files), tool, ["tool"], root).cwd == Path("/tmp")
    assert plan(config(pwd="/", injection_files=files), tool, ["tool"], root).cwd == Path("/")


def test_files_are_written_with_their_modes(tool: ResolvedProgram, root: Path) -> None:
    workload = config(
        injection_files=(
            InjectionFile("/etc/app/conf", b"secret", None),
            InjectionFile("/etc/app/public", b"public", "0644"),
            InjectionFile("/readonly", b"ro", "0400"),
        )
    )
    write_private_files(plan(workload, tool, ["tool"], root))
    assert (root / "etc/app/conf").read_bytes() == b"secret"
    assert stat.S_IMODE((root / "etc/app/conf").stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "etc/app/public").stat().st_mode) == 0o644
    assert stat.S_IMODE((root / "readonly").stat().st_mode) == 0o400
    assert stat.S_IMODE((root / "etc").stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "etc/app").stat().st_mode) == 0o700


# --- certificates ----------------------------------------------------------------------------


def test_certificates_and_the_workload_key(tool: ResolvedProgram, root: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    workload = config(certificates={"tls": IssuedCertificate(PEM, PEM + PEM)})
    result = plan(workload, tool, ["tool"], root, workload_key=key)
    write_private_files(result)
    certs = root / "certs"
    assert result.environment["CAS_CERTS_DIR"] == str(certs)
    assert (certs / "tls.crt").read_text() == PEM
    assert (certs / "tls.chain.pem").read_text() == PEM + PEM
    assert stat.S_IMODE((certs / "workload-key.pem").stat().st_mode) == 0o600
    loaded = load_private_key_pem((certs / "workload-key.pem").read_bytes())
    assert key_hash(loaded) == key_hash(key)


def test_no_certificates_no_key_on_disk(tool: ResolvedProgram, root: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    result = plan(config(), tool, ["tool"], root, workload_key=key)
    assert "CAS_CERTS_DIR" not in result.environment
    assert result.files == ()


def test_injection_below_certs_collides(tool: ResolvedProgram, root: Path) -> None:
    workload = config(
        certificates={"tls": IssuedCertificate(PEM, PEM)},
        injection_files=(InjectionFile("/certs/tls.crt", b"", None),),
    )
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ClientError, match="collides"):
        plan(workload, tool, ["tool"], root, workload_key=key)


def test_certificates_need_the_workload_key(tool: ResolvedProgram, root: Path) -> None:
    workload = config(certificates={"tls": IssuedCertificate(PEM, PEM)})
    with pytest.raises(ClientError, match="no workload key"):
        plan(workload, tool, ["tool"], root)


# --- environment -----------------------------------------------------------------------------


def test_environment_is_filtered(tool: ResolvedProgram, root: Path) -> None:
    workload = config(environment={"APP_MODE": "prod", "LANG": "de_DE.UTF-8"})
    result = plan(workload, tool, ["tool"], root, pass_env=["EXTRA", "UNSET_ONE"])
    assert dict(result.environment) == {
        "PATH": "/usr/bin:/bin",
        "HOME": "/home/me",
        "LANG": "de_DE.UTF-8",
        "EXTRA": "passed on request",
        "APP_MODE": "prod",
        "CAS_INJECTION_DIR": str(root),
    }


def test_bad_pass_env_name(tool: ResolvedProgram, root: Path) -> None:
    with pytest.raises(ClientError, match="--pass-env"):
        plan(config(), tool, ["tool"], root, pass_env=["A=B"])


@pytest.mark.parametrize("name", ["LD_PRELOAD", "PYTHONSTARTUP", "BASH_ENV", "GLIBC_TUNABLES"])
def test_code_changing_pass_env_is_refused(tool: ResolvedProgram, root: Path, name: str) -> None:
    with pytest.raises(ClientError, match=f"--pass-env: {name} is not passed"):
        plan(config(), tool, ["tool"], root, pass_env=[name])


def test_the_session_may_set_code_changing_variables(tool: ResolvedProgram, root: Path) -> None:
    workload = config(environment=MappingProxyType({"PYTHONNOUSERSITE": "1", "LD_BIND_NOW": "1"}))
    result = plan(workload, tool, ["tool"], root)
    assert result.environment["PYTHONNOUSERSITE"] == "1"
    assert result.environment["LD_BIND_NOW"] == "1"


# --- signals and exit status -----------------------------------------------------------------


def test_signal_forwarding_decision() -> None:
    si_user = 0
    assert should_forward(signal.SIGTERM, si_user)
    assert not should_forward(signal.SIGINT, SI_KERNEL)  # the terminal sent it to the group
    assert should_forward(signal.SIGINT, SI_KERNEL, same_process_group=False)
    assert not should_forward(signal.SIGCHLD, si_user)


def test_exit_status() -> None:
    assert exit_status(0) == 0
    assert exit_status(3) == 3
    assert exit_status(-signal.SIGTERM) == 128 + signal.SIGTERM


# --- running real children -------------------------------------------------------------------


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


def python_child(code: str) -> tuple[ResolvedProgram, WorkloadConfig]:
    program = resolve_program([sys.executable, "-c", code])
    return program, config(command=(sys.executable, "-c", code))


def test_child_reads_injected_file_and_environment(tmp_path: Path, private_tmp: Path) -> None:
    out = tmp_path / "out"
    code = (
        "import os, stat, sys\n"
        "path = os.environ['CONF']\n"
        "mode = stat.S_IMODE(os.stat(path).st_mode)\n"
        "root = os.environ['CAS_INJECTION_DIR']\n"
        "root_mode = stat.S_IMODE(os.stat(root).st_mode)\n"
        f"open({str(out)!r}, 'w').write('|'.join([open(path).read(), oct(mode), oct(root_mode),"
        " root, os.getcwd(), os.environ.get('SECRET_OF_THE_USER', 'absent')]))\n"
        "sys.exit(7)\n"
    )
    program, workload = python_child(code)
    workload = replace(
        workload,
        environment=MappingProxyType({"CONF": "/etc/app/conf"}),
        injection_files=(InjectionFile("/etc/app/conf", b"hello from the CAS", "0640"),),
        pwd="/etc/app",
    )
    status = launch(workload, program, [sys.executable], parent_environment=PARENT_ENV)
    content, mode, root_mode, root, cwd, secret = out.read_text().split("|")
    assert status == 7
    assert content == "hello from the CAS"
    assert (mode, root_mode) == ("0o640", "0o700")
    assert Path(root).parent == private_tmp
    assert cwd == f"{root}/etc/app"
    assert secret == "absent"
    assert not Path(root).exists()
    assert list(private_tmp.iterdir()) == []


def test_killed_child_gives_128_plus_signal(private_tmp: Path) -> None:
    program, workload = python_child("import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    status = launch(workload, program, [sys.executable], parent_environment=PARENT_ENV)
    assert status == 128 + signal.SIGTERM
    assert list(private_tmp.iterdir()) == []


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2]
)
def test_signals_are_forwarded(private_tmp: Path, signum: signal.Signals) -> None:
    # The child blocks the signal, sends it to its parent (the launcher, in this process) and
    # waits for it to come back: no timing involved.
    code = (
        "import os, signal, sys\n"
        f"signal.pthread_sigmask(signal.SIG_BLOCK, {{{int(signum)}}})\n"
        f"os.kill(os.getppid(), {int(signum)})\n"
        f"received = signal.sigwait({{{int(signum)}}})\n"
        "sys.exit(40 + int(received) % 20)\n"
    )
    program, workload = python_child(code)
    # A runner started in the background (nohup, `&` without job control) inherits SIGHUP or
    # SIGINT ignored, and the launcher rightly leaves ignored signals ignored: start from the
    # default disposition so this test sees forwarding, whatever started the suite.
    inherited = signal.signal(signum, signal.SIG_DFL)
    try:
        handler_before = signal.getsignal(signum)
        status = launch(workload, program, [sys.executable], parent_environment=PARENT_ENV)
        assert status == 40 + int(signum) % 20
        assert signal.getsignal(signum) is handler_before
        assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == set()
    finally:
        signal.signal(signum, inherited)


def test_ignored_signals_stay_ignored(private_tmp: Path) -> None:
    code = "import signal, sys; sys.exit(signal.getsignal(signal.SIGHUP) is signal.SIG_IGN)"
    program, workload = python_child(code)
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        status = launch(workload, program, [sys.executable], parent_environment=PARENT_ENV)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert status == 1


def test_directory_is_removed_even_when_the_child_locks_it(private_tmp: Path) -> None:
    code = (
        "import os\n"
        "root = os.environ['CAS_INJECTION_DIR']\n"
        "os.makedirs(root + '/locked/inner')\n"
        "open(root + '/locked/inner/f', 'w').close()\n"
        "os.chmod(root + '/locked/inner', 0)\n"
        "os.chmod(root + '/locked', 0o500)\n"
        "os.chmod(root, 0o500)\n"
    )
    program, workload = python_child(code)
    assert launch(workload, program, [sys.executable], parent_environment=PARENT_ENV) == 0
    assert list(private_tmp.iterdir()) == []


def test_directory_is_removed_when_refused(private_tmp: Path, tool: ResolvedProgram) -> None:
    with pytest.raises(ClientError, match="the session runs"):
        launch(config(command=("other",)), tool, ["tool"], parent_environment=PARENT_ENV)
    assert list(private_tmp.iterdir()) == []


def test_program_that_cannot_start(tmp_path: Path, root: Path) -> None:
    broken = make_executable(tmp_path / "broken", b"\x7fELF not really")
    result = LaunchPlan(broken, (str(broken),), MappingProxyType({}), None, root, ())
    with pytest.raises(ClientError, match="cannot start"):
        run_plan(result)


def test_remove_missing_directory_is_fine(tmp_path: Path) -> None:
    remove_private_directory(tmp_path / "absent")
    assert os.path.exists(tmp_path)


# --- host values (@@N, @@NAME) -------------------------------------------------------------------


def test_host_arguments_and_variables_fill_the_session_command(
    tool: ResolvedProgram, root: Path
) -> None:
    workload = config(
        command=("tool", "--in", "@@1", "--lang=@@LANG"),
        environment={"TARGET": "@@2", "FIXED": "x"},
    )
    result = plan(workload, tool, ["tool", "a.txt", "b.txt"], root)

    assert result.argv == (str(tool.executable), "--in", "a.txt", f"--lang={PARENT_ENV['LANG']}")
    assert result.environment["TARGET"] == "b.txt"
    assert result.environment["FIXED"] == "x"


def test_a_missing_host_argument_refuses_to_start(tool: ResolvedProgram, root: Path) -> None:
    with pytest.raises(ClientError, match="uses @@2"):
        plan(config(command=("tool", "@@2")), tool, ["tool", "only-one"], root)


def test_a_code_changing_variable_may_not_take_a_host_value(
    tool: ResolvedProgram, root: Path
) -> None:
    with pytest.raises(ClientError, match="LD_PRELOAD takes a host value"):
        plan(config(environment={"LD_PRELOAD": "@@EXTRA"}), tool, ["tool"], root)


# --- protected files ------------------------------------------------------------------------------


def test_decrypted_protected_paths_mean_their_private_copies(
    tool: ResolvedProgram, root: Path
) -> None:
    workload = config(
        command=("tool", "--model", "/srv/app/model/w.bin", "--all", "/srv/app/model"),
        environment={"MODEL": "/srv/app/model/w.bin", "OTHER": "/srv/app/model-old"},
        pwd="/srv/app/model",
    )
    protected = ("/srv/app/model/w.bin", "/srv/app/model")

    result = plan(workload, tool, ["tool"], root, protected_paths=protected)

    private = root / "srv" / "app" / "model"
    assert result.argv[1:] == ("--model", str(private / "w.bin"), "--all", str(private))
    assert result.environment["MODEL"] == str(private / "w.bin")
    assert result.environment["OTHER"] == "/srv/app/model-old"
    assert result.cwd == private


@pytest.mark.parametrize("path", ["/srv/app/model/w.bin", "/srv/app/model/extra.conf"])
def test_an_injection_file_may_not_collide_with_a_decrypted_path(
    tool: ResolvedProgram, root: Path, path: str
) -> None:
    workload = config(injection_files=(InjectionFile(path, b"x", None),))

    with pytest.raises(ClientError, match="collides with an encrypted protected file"):
        plan(
            workload,
            tool,
            ["tool"],
            root,
            protected_paths=("/srv/app/model/w.bin", "/srv/app/model"),
        )
