"""Start an attested workload with the configuration its CAS sent.

:func:`plan_launch` decides everything (argv, environment, working directory, files) from the
configuration, the measured program and the user's command line, without writing anything;
:func:`write_private_files` puts the files into the private directory; :func:`run_plan` runs the
child, forwarding signals, and returns its exit status; :func:`launch` does all of it and removes
the private directory whatever happens.

The rules (shared spec, "Runtime"):

- Injection files: a session path ``/abs/dir/file`` is written to ``<private>/abs/dir/file``
  with its permission (default ``0600``); every occurrence of a session path in the arguments
  and environment values becomes its private path. ``CAS_INJECTION_DIR`` names the private
  root. Per-workload certificates go to ``<private>/certs/`` (``<secret>.crt``,
  ``<secret>.chain.pem``, ``workload-key.pem``) and ``CAS_CERTS_DIR`` names that directory.
- Arguments: a non-empty session ``command`` is the whole argv; its first element must name the
  measured executable, and the user's arguments are ignored. Otherwise the user's arguments
  apply. The measured executable is what runs, whatever the name.
- For an interpreter, the script the arguments would run must be the very file that was
  measured (or, when none was measured, the arguments must not name a file to run).
- Environment: the session's variables, plus ``PATH``, ``HOME``, ``LANG``, ``TERM`` and the
  names passed with ``--pass-env`` from casctl's own environment; the session wins a conflict.
  A ``--pass-env`` name that changes what code runs is refused
  (:mod:`opencas.runtime.passed_environment`).
- ``pwd``: the working directory; a directory of injection files means its private copy.
- Host values (SCONE's ``@@N`` and ``@@NAME``, :mod:`opencas.runtime.host_values`): in the
  session's command, environment values and ``pwd``, ``@@N`` is the user's N-th argument after
  the program and ``@@NAME`` casctl's variable NAME; a session variable that takes a host value
  must be one ``--pass-env`` could pass.
- Protected files (the service's ``fspf_path``, :mod:`opencas.runtime.fspf`): checked before
  anything else is written; each encrypted file is decrypted to ``<private>/abs/path`` and, like
  an injection file, its path (and its encrypted region's) in the arguments, environment values
  and ``pwd`` means its private copy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from types import FrameType, MappingProxyType

from cryptography.hazmat.primitives.asymmetric import ec

from opencas.client.enclave import WorkloadConfig
from opencas.crypto.pem import private_key_pem
from opencas.errors import ClientError
from opencas.policy.model import check_environment_name
from opencas.runtime.fspf import open_protected_tree
from opencas.runtime.host_values import HOST_VALUE, fill_host_values
from opencas.runtime.measure import ResolvedProgram, find_executable, script_argument
from opencas.runtime.passed_environment import ALWAYS_PASSED, check_passable
from opencas.runtime.volumes import (
    Reporter,
    check_volume_paths,
    close_volumes,
    open_volumes,
    volume_directory,
)

logger = logging.getLogger(__name__)

FORWARDED_SIGNALS = frozenset(
    {
        signal.SIGINT,
        signal.SIGTERM,
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGUSR1,
        signal.SIGUSR2,
    }
)
CERTS_DIRECTORY = "certs"
WORKLOAD_KEY_FILE = "workload-key.pem"
DEFAULT_PERMISSION = 0o600
CERTIFICATE_PERMISSION = 0o644
# si_code of a signal the kernel generated itself, as the terminal does for Ctrl-C (Linux).
SI_KERNEL = 0x80
# How long to wait for a signal before checking on the child anyway: a safety net only, since
# SIGCHLD normally ends the wait at once.
_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class PlannedFile:
    """A file to create below the private root: ``relative`` path, ``content`` and ``mode``."""

    relative: PurePosixPath
    content: bytes = field(repr=False)
    mode: int


@dataclass(frozen=True)
class LaunchPlan:
    """Everything needed to start the workload, decided before anything is written or run.

    ``argv[0]`` is the name the program was found under; ``executable`` is the measured file
    that actually runs. ``cwd`` None means casctl's own working directory.
    """

    executable: Path
    argv: tuple[str, ...] = field(repr=False)
    environment: Mapping[str, str] = field(repr=False)
    cwd: Path | None
    private_root: Path
    files: tuple[PlannedFile, ...]


def parse_permission(permission: str | None) -> int:
    """The mode for an injection file's permission string (octal, ``"0640"``); default 0600.

    Raises :class:`ClientError` for anything but ``0`` and three octal digits.
    """
    if permission is None:
        return DEFAULT_PERMISSION
    if not re.fullmatch(r"0[0-7]{3}", permission):
        raise ClientError(f"injection file permission {permission!r} is not like 0600")
    return int(permission, 8)


def private_relative(session_path: str) -> PurePosixPath:
    """Where the session path ``/abs/dir/file`` goes below the private root: ``abs/dir/file``.

    Raises :class:`ClientError` for a relative path, ``/`` itself, or a path with an empty,
    ``.`` or ``..`` segment, so nothing is ever written outside the private root.
    """
    segments = session_path[1:].split("/")
    if (
        not session_path.startswith("/")
        or "\0" in session_path
        or any(segment in {"", ".", ".."} for segment in segments)
    ):
        raise ClientError(
            f"injection file path {session_path!r} must be absolute, without empty, '.' or '..' "
            "segments"
        )
    return PurePosixPath(*segments)


def _planned_files(
    config: WorkloadConfig, workload_key: ec.EllipticCurvePrivateKey | None
) -> tuple[PlannedFile, ...]:
    files = [
        PlannedFile(private_relative(item.path), item.content, parse_permission(item.permission))
        for item in config.injection_files
    ]
    if config.certificates:
        if workload_key is None:
            raise ClientError("the CAS issued certificates, but there is no workload key for them")
        certs = PurePosixPath(CERTS_DIRECTORY)
        if any(item.relative.parts[0] == CERTS_DIRECTORY for item in files):
            raise ClientError(
                f"an injection file below /{CERTS_DIRECTORY} collides with the directory of "
                "the workload's certificates"
            )
        for name, issued in sorted(config.certificates.items()):
            certificate = issued.certificate.encode()
            chain = issued.chain.encode()
            files.append(PlannedFile(certs / f"{name}.crt", certificate, CERTIFICATE_PERMISSION))
            files.append(PlannedFile(certs / f"{name}.chain.pem", chain, CERTIFICATE_PERMISSION))
        key_pem = private_key_pem(workload_key)
        files.append(PlannedFile(certs / WORKLOAD_KEY_FILE, key_pem, DEFAULT_PERMISSION))
    paths = {item.relative for item in files}
    if len(paths) != len(files):
        raise ClientError("two injection files have the same path")
    for item in files:
        for parent in item.relative.parents:
            if parent in paths:
                raise ClientError(f"injection file /{parent} would have to be a directory")
    return tuple(files)


def path_mapper(private_root: Path, session_paths: Sequence[str]) -> Callable[[str], str]:
    """A function that replaces each session path in a text by its private path.

    A session path counts only as a whole path: not preceded by a character that would make it
    part of a longer path, and not followed by a name character (so ``/etc/a`` is not replaced
    in ``/opt/etc/a`` or ``/etc/a.bak``). All paths are replaced in one pass, longest first, so
    a replacement is never replaced again.
    """
    if not session_paths:
        return lambda text: text
    mapping = {path: str(private_root / private_relative(path)) for path in session_paths}
    alternatives = "|".join(re.escape(path) for path in sorted(mapping, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w.~/-])(?:{alternatives})(?![\w.~-])")
    return lambda text: pattern.sub(lambda match: mapping[match.group(0)], text)


def _check_executable(command0: str, program: ResolvedProgram, user_program: str) -> None:
    names = {program.executable.name, program.invoked_path.name, PurePosixPath(user_program).name}
    if PurePosixPath(command0).name in names:
        return
    try:
        if find_executable(command0).resolve() == program.executable:
            return
    except (ClientError, OSError):
        pass
    raise ClientError(
        f"the session runs {command0}, not {user_program}: run it as "
        f"`casctl run ... -- {PurePosixPath(command0).name} ...`"
    )


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # inline code is no file name: too long, for instance
        return False


def _check_script(
    arguments: Sequence[str], program: ResolvedProgram, base: Path, injected: frozenset[Path]
) -> None:
    """Refuse to run an interpreter on anything but the script that was measured.

    ``injected`` holds the resolved private paths of the files about to be written. Messages
    quote the script argument only when it names a file: otherwise it may be inline code that
    carries secrets.
    """
    candidate = script_argument(arguments)
    measured = program.script
    if candidate is None:
        if measured is not None:
            raise ClientError(
                f"the session runs {program.executable.name} without a script, but {measured} "
                "was measured"
            )
        return
    path = (base / candidate).resolve()
    if path in injected:
        raise ClientError(
            f"the session runs the injected file {candidate} as a script; only a measured "
            "script may run"
        )
    if _is_file(path):
        if measured is None:
            raise ClientError(
                f"the session runs the script {path}, which was not measured: name it after "
                f"the interpreter (casctl run ... -- {program.invoked_path.name} {candidate})"
            )
        if path != measured:
            raise ClientError(f"the session runs the script {path}, but {measured} was measured")
    elif measured is not None:
        raise ClientError(
            f"the session's arguments do not run the measured script {measured}; "
            "what runs must be what was measured"
        )


def _working_directory(
    directory: str | None,
    private_root: Path,
    files: Sequence[PlannedFile],
    protected_paths: Sequence[str] = (),
) -> Path | None:
    if directory is None:
        return None
    # "/" holds every injection file, but it means the real root, not the private one.
    if directory != "/":
        relative = private_relative(directory)
        decrypted = [private_relative(path) for path in protected_paths]
        if relative in decrypted or any(
            relative in item.parents for item in [*decrypted, *(f.relative for f in files)]
        ):
            return private_root / relative
    return Path(directory)


def _environment(
    config: WorkloadConfig,
    mapped: Callable[[str], str],
    parent_environment: Mapping[str, str],
    pass_env: Sequence[str],
    private_root: Path,
    with_certificates: bool,
) -> dict[str, str]:
    environment: dict[str, str] = {}
    for name in (*ALWAYS_PASSED, *pass_env):
        try:
            check_environment_name(name)
            if name not in ALWAYS_PASSED:
                check_passable(name)
        except ValueError as exc:
            raise ClientError(f"--pass-env: {exc}") from exc
        if name in parent_environment:
            environment[name] = parent_environment[name]
    environment.update({name: mapped(value) for name, value in config.environment.items()})
    environment["CAS_INJECTION_DIR"] = str(private_root)
    if with_certificates:
        environment["CAS_CERTS_DIR"] = str(private_root / CERTS_DIRECTORY)
    return environment


def _with_host_values(
    config: WorkloadConfig, arguments: Sequence[str], environment: Mapping[str, str]
) -> WorkloadConfig:
    """``config`` with its ``@@N`` and ``@@NAME`` filled in from the user's command line and
    casctl's environment (before anything else is decided, so every check sees the result)."""
    for name, value in config.environment.items():
        if HOST_VALUE.search(value):
            try:
                check_passable(name)
            except ValueError as exc:
                raise ClientError(f"environment {name} takes a host value (@@): {exc}") from exc
    return replace(
        config,
        command=tuple(
            fill_host_values(item, arguments, environment, "command") for item in config.command
        ),
        environment={
            name: fill_host_values(value, arguments, environment, f"environment {name}")
            for name, value in config.environment.items()
        },
        pwd=None
        if config.pwd is None
        else fill_host_values(config.pwd, arguments, environment, "pwd"),
    )


def plan_launch(
    config: WorkloadConfig,
    program: ResolvedProgram,
    user_argv: Sequence[str],
    private_root: Path,
    *,
    parent_environment: Mapping[str, str],
    pass_env: Sequence[str] = (),
    workload_key: ec.EllipticCurvePrivateKey | None = None,
    current_directory: Path | None = None,
    protected_paths: Sequence[str] = (),
) -> LaunchPlan:
    """Decide how to start the workload, as the module docstring's rules say; write nothing.

    ``user_argv`` is the user's command line (``PROGRAM ARGS...``) that ``program`` was
    resolved and measured from; ``private_root`` the (existing, empty) private directory;
    ``parent_environment`` casctl's environment; ``workload_key`` the key the per-workload
    certificates certify; ``current_directory`` where relative scripts are found when the
    session sets no ``pwd`` (default: the current directory). Raises :class:`ClientError`,
    before anything starts, when the session runs another program or an unmeasured script,
    an injection path is not absolute or has ``..``, files collide, or a ``--pass-env`` name
    is invalid. ``protected_paths`` are the encrypted files and regions already decrypted below
    ``private_root``; an injection file may not collide with them.
    """
    if not user_argv:
        raise ClientError("no program given")
    files = _planned_files(config, workload_key)
    _refuse_collisions(files, protected_paths)
    check_volume_paths(
        config.volumes,
        [*(item.relative for item in files), *(private_relative(p) for p in protected_paths)],
        private_relative,
    )
    config = _with_host_values(config, user_argv[1:], parent_environment)
    mapped = path_mapper(
        private_root,
        [
            *(item.path for item in config.injection_files),
            *protected_paths,
            *(volume.path for volume in config.volumes),
        ],
    )
    if config.command:
        _check_executable(config.command[0], program, user_argv[0])
        arguments = [mapped(argument) for argument in config.command[1:]]
    else:
        arguments = [mapped(argument) for argument in user_argv[1:]]
    cwd = volume_directory(
        config.pwd, private_root, config.volumes, private_relative
    ) or _working_directory(config.pwd, private_root, files, protected_paths)
    if program.interpreter:
        base = cwd or current_directory or Path.cwd()
        injected = frozenset((private_root / item.relative).resolve() for item in files)
        _check_script(arguments, program, base, injected)
    environment = _environment(
        config, mapped, parent_environment, pass_env, private_root, bool(config.certificates)
    )
    return LaunchPlan(
        executable=program.executable,
        argv=(str(program.invoked_path), *arguments),
        environment=MappingProxyType(environment),
        cwd=cwd,
        private_root=private_root,
        files=files,
    )


def _refuse_collisions(files: Sequence[PlannedFile], protected_paths: Sequence[str]) -> None:
    decrypted = {private_relative(path) for path in protected_paths}
    for item in files:
        if item.relative in decrypted or any(p in decrypted for p in item.relative.parents):
            raise ClientError(
                f"injection file /{item.relative} collides with an encrypted protected file"
            )


def create_private_directory() -> Path:
    """A new directory only this user can enter (mode 0700, from ``mkdtemp``)."""
    return Path(tempfile.mkdtemp(prefix="casctl-run-"))


def write_private_files(plan: LaunchPlan) -> None:
    """Create the plan's files below its private root, each with its exact mode.

    Directories are created 0700; files are created exclusively and never through a symbolic
    link. Raises ``OSError`` when a file cannot be written.
    """
    root = plan.private_root
    for item in plan.files:
        directory = root
        for part in item.relative.parent.parts:
            directory = directory / part
            with contextlib.suppress(FileExistsError):
                directory.mkdir(mode=0o700)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(root / item.relative, flags, 0o600)
        try:
            view = memoryview(item.content)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, item.mode)
        finally:
            os.close(fd)


def remove_private_directory(root: Path) -> None:
    """Remove ``root`` and everything in it, even what the program made read-only.

    Raises ``OSError`` when something cannot be removed.
    """
    if not root.exists():
        return
    root.chmod(0o700)
    for directory, dirnames, _ in os.walk(root):
        for name in dirnames:
            path = Path(directory) / name
            if stat.S_ISDIR(path.lstat().st_mode):
                path.chmod(0o700)
    shutil.rmtree(root)


def should_forward(signum: int, si_code: int, same_process_group: bool = True) -> bool:
    """Whether a signal casctl received must be passed on to the child.

    A signal the terminal generated (``si_code`` is ``SI_KERNEL``) already reached the child
    when it shares casctl's process group; passing it on would deliver it twice (a second
    Ctrl-C means "force quit" to many programs).
    """
    if signum not in FORWARDED_SIGNALS:
        return False
    return not (si_code == SI_KERNEL and same_process_group)


def exit_status(returncode: int) -> int:
    """casctl's exit code for a child's ``returncode``: its own, or 128+N if signal N killed it."""
    return 128 - returncode if returncode < 0 else returncode


def run_plan(plan: LaunchPlan) -> int:
    """Start the planned child, forward signals to it, wait, and return :func:`exit_status`.

    Must be called from the main thread (it changes signal dispositions and the signal mask,
    and restores both before returning). Signals that arrive while the child starts are
    passed on once it runs; signals casctl ignores stay ignored, in the child too. Raises
    :class:`ClientError` when the program cannot be started.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("run_plan must be called from the main thread")
    early: list[int] = []

    def remember(signum: int, _: FrameType | None) -> None:
        early.append(signum)

    # A signal casctl was started to ignore (nohup, a background job) stays ignored, so that
    # the child inherits that as it would without casctl.
    forwarded = {s for s in FORWARDED_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN}
    watched = {*forwarded, signal.SIGCHLD}
    previous = {signum: signal.signal(signum, remember) for signum in forwarded}
    try:
        try:
            child = subprocess.Popen(  # noqa: S603 - runs exactly the measured program
                plan.argv,
                executable=plan.executable,
                env=dict(plan.environment),
                cwd=plan.cwd,
            )
        except OSError as exc:
            raise ClientError(f"cannot start {plan.argv[0]}: {exc.strerror or exc}") from exc
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
        try:
            return exit_status(_wait_forwarding(child, watched, early))
        finally:
            while signal.sigtimedwait(watched, 0) is not None:
                pass  # signals for a child that has exited have nowhere to go
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _wait_forwarding(
    child: subprocess.Popen[bytes], watched: set[signal.Signals], early: list[int]
) -> int:
    try:
        same_group = os.getpgid(child.pid) == os.getpgrp()
    except ProcessLookupError:
        same_group = True
    while (returncode := child.poll()) is None:
        # A signal caught before it was blocked may have its Python handler run only now.
        while early:
            child.send_signal(early.pop(0))
        info = signal.sigtimedwait(watched, _POLL_SECONDS)
        if info is None or info.si_signo == signal.SIGCHLD:
            continue
        if should_forward(info.si_signo, info.si_code, same_group):
            child.send_signal(info.si_signo)
    return returncode


def launch(
    config: WorkloadConfig,
    program: ResolvedProgram,
    user_argv: Sequence[str],
    *,
    pass_env: Sequence[str] = (),
    workload_key: ec.EllipticCurvePrivateKey | None = None,
    parent_environment: Mapping[str, str] | None = None,
    volume_stores: Mapping[str, Path] | None = None,
    report_tag: Reporter | None = None,
) -> int:
    """Run the workload as ``config`` says and return its exit status (128+N if signal N).

    Creates the private directory, plans (:func:`plan_launch`), writes the files, runs the
    child (:func:`run_plan`) and removes the directory in every case. Raises
    :class:`ClientError` (or ``OSError``) when it refuses or fails before the program starts;
    a directory that cannot be removed afterwards is only reported (the program's status
    stands). The service's volumes are opened before the program starts and sealed after it
    succeeded (:mod:`opencas.runtime.volumes`), their new tags reported with ``report_tag``;
    ``volume_stores`` moves a volume's store away from its session path.
    """
    environment = os.environ if parent_environment is None else parent_environment
    root = create_private_directory()
    try:
        protected: tuple[str, ...] = ()
        if config.fspf is not None:
            tree = open_protected_tree(config.fspf.path, config.fspf.key, config.fspf.tag, root)
            protected = (*tree.decrypted_files, *tree.encrypted_regions)
        plan = plan_launch(
            config,
            program,
            user_argv,
            root,
            parent_environment=environment,
            pass_env=pass_env,
            workload_key=workload_key,
            protected_paths=protected,
        )
        write_private_files(plan)
        mounted = open_volumes(config.volumes, root, private_relative, volume_stores or {})
        status = run_plan(plan)
        if not mounted:
            return status
        if report_tag is None:
            raise ClientError("the service has volumes, but nothing reports their new tags")
        return close_volumes(mounted, status, report_tag)
    finally:
        try:
            remove_private_directory(root)
        except OSError as exc:
            logger.warning("could not remove the private directory %s: %s", root, exc)
