"""The simulated measurement of a workload program: its exact format and what it depends on."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import pytest

from opencas.errors import ClientError
from opencas.runtime.measure import (
    ResolvedProgram,
    find_executable,
    is_interpreter,
    measure_program,
    resolve_program,
    script_argument,
)


def make_executable(path: Path, content: bytes = b"#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    path.chmod(0o755)
    return path


def item(role: str, name: str, content: bytes) -> bytes:
    return (
        role.encode() + b"\0" + name.encode() + b"\0" + str(len(content)).encode() + b"\0" + content
    )


def test_exact_byte_format(tmp_path: Path) -> None:
    tool = make_executable(tmp_path / "bin" / "tool", b"binary bytes")
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "data" / "b.txt").write_bytes(b"B")
    (tmp_path / "data" / "sub" / "a.txt").write_bytes(b"")
    (tmp_path / "data" / "a.txt").write_bytes(b"AA")
    single = tmp_path / "single.cfg"
    single.write_bytes(b"cfg")

    measurement = measure_program(resolve_program([str(tool)]), [tmp_path / "data", single])

    expected = hashlib.sha256(
        item("executable", "tool", b"binary bytes")
        + item("measure", "a.txt", b"AA")
        + item("measure", "b.txt", b"B")
        + item("measure", "sub/a.txt", b"")
        + item("measure", "single.cfg", b"cfg")
    ).hexdigest()
    assert measurement.value == expected
    assert [(i.role, i.name, i.length) for i in measurement.items] == [
        ("executable", "tool", 12),
        ("measure", "a.txt", 2),
        ("measure", "b.txt", 1),
        ("measure", "sub/a.txt", 0),
        ("measure", "single.cfg", 3),
    ]
    assert measurement.items[0].sha256 == hashlib.sha256(b"binary bytes").hexdigest()
    assert measurement.items[0].to_json()["path"] == str(tool)


def test_deterministic_and_content_only(tmp_path: Path) -> None:
    tool = make_executable(tmp_path / "a" / "tool", b"program")
    first = measure_program(resolve_program([str(tool)])).value
    assert measure_program(resolve_program([str(tool)])).value == first
    moved = tmp_path / "elsewhere" / "deeper" / "tool"
    moved.parent.mkdir(parents=True)
    shutil.copy2(tool, moved)
    assert measure_program(resolve_program([str(moved)])).value == first


def test_any_changed_byte_changes_it(tmp_path: Path) -> None:
    tool = make_executable(tmp_path / "tool", b"program")
    before = measure_program(resolve_program([str(tool)])).value
    tool.write_bytes(b"programm")
    assert measure_program(resolve_program([str(tool)])).value != before
    tool.write_bytes(b"Program")
    assert measure_program(resolve_program([str(tool)])).value != before


def test_measured_directory_changes_with_its_files(tmp_path: Path) -> None:
    tool = make_executable(tmp_path / "tool")
    data = tmp_path / "data"
    data.mkdir()
    (data / "x").write_bytes(b"1")
    program = resolve_program([str(tool)])
    before = measure_program(program, [data]).value
    (data / "x").write_bytes(b"2")
    changed = measure_program(program, [data]).value
    (data / "y").write_bytes(b"")
    added = measure_program(program, [data]).value
    assert len({before, changed, added}) == 3
    assert measure_program(program).value not in {before, changed, added}


def test_measure_order_matters(tmp_path: Path) -> None:
    tool = make_executable(tmp_path / "tool")
    one, two = tmp_path / "one", tmp_path / "two"
    one.write_bytes(b"1")
    two.write_bytes(b"2")
    program = resolve_program([str(tool)])
    assert measure_program(program, [one, two]).value != measure_program(program, [two, one]).value


def test_symbolic_link_in_a_measured_directory_is_refused(tmp_path: Path) -> None:
    tool = make_executable(tmp_path / "tool")
    data = tmp_path / "data"
    data.mkdir()
    (data / "link").symlink_to(tool)
    with pytest.raises(ClientError, match="link is a symbolic link"):
        measure_program(resolve_program([str(tool)]), [data])


def test_missing_measure_path_is_an_error(tmp_path: Path) -> None:
    tool = make_executable(tmp_path / "tool")
    with pytest.raises(ClientError, match="cannot measure"):
        measure_program(resolve_program([str(tool)]), [tmp_path / "absent"])


@pytest.mark.parametrize(
    "name",
    ["python", "python3", "python3.11", "python3.13", "node", "ruby", "perl", "bash", "sh"],
)
def test_interpreters(name: str) -> None:
    assert is_interpreter(name)


@pytest.mark.parametrize("name", ["python2", "python3.", "python3.x", "pythonw", "zsh", "tool"])
def test_not_interpreters(name: str) -> None:
    assert not is_interpreter(name)


def test_script_argument_is_the_first_without_a_dash() -> None:
    assert script_argument(["-u", "-", "app.py", "x.py"]) == "app.py"
    assert script_argument(["-u"]) is None
    assert script_argument([]) is None


def test_interpreter_with_script(tmp_path: Path) -> None:
    interpreter = make_executable(tmp_path / "bin" / "python3", b"interpreter")
    script = tmp_path / "app" / "main.py"
    script.parent.mkdir()
    script.write_bytes(b"print('hi')\n")

    resolved = resolve_program([str(interpreter), "-u", str(script), "arg"])

    assert resolved == ResolvedProgram(interpreter, script, None)
    measurement = measure_program(resolved)
    assert (
        measurement.value
        == hashlib.sha256(
            item("executable", "python3", b"interpreter")
            + item("script", "main.py", b"print('hi')\n")
        ).hexdigest()
    )
    copy = tmp_path / "copy" / "main.py"
    copy.parent.mkdir()
    shutil.copy2(script, copy)
    assert measure_program(resolve_program([str(interpreter), str(copy)])).value == (
        measurement.value
    )
    script.write_bytes(b"print('ho')\n")
    assert measure_program(resolve_program([str(interpreter), str(script)])).value != (
        measurement.value
    )


def test_interpreter_argument_that_is_not_a_file(tmp_path: Path) -> None:
    interpreter = make_executable(tmp_path / "python3")
    resolved = resolve_program([str(interpreter), "-c", "print(1)"])
    assert resolved.script is None
    assert resolved.interpreter


def test_long_inline_code_is_not_a_script(tmp_path: Path) -> None:
    interpreter = make_executable(tmp_path / "python3")
    assert resolve_program([str(interpreter), "-c", "x = 1;" * 200]).script is None


def test_non_interpreter_arguments_are_not_scripts(tmp_path: Path) -> None:
    tool = make_executable(tmp_path / "tool")
    other = tmp_path / "other.py"
    other.write_text("x")
    resolved = resolve_program([str(tool), str(other)])
    assert resolved.script is None
    assert not resolved.interpreter


def test_relative_script_is_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_executable(tmp_path / "node")
    (tmp_path / "app.js").write_text("1")
    monkeypatch.chdir(tmp_path)
    assert resolve_program(["./node", "app.js"]).script == tmp_path / "app.js"


def test_path_lookup_and_symlinks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = make_executable(tmp_path / "real" / "python3.11", b"real interpreter")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(real)
    monkeypatch.setenv("PATH", str(bin_dir))

    resolved = resolve_program(["python"])

    assert resolved.executable == real
    assert resolved.invoked == bin_dir / "python"
    assert resolved.invoked_path == bin_dir / "python"
    assert resolved.interpreter
    assert measure_program(resolved).items[0].name == "python3.11"
    assert find_executable("python") == bin_dir / "python"


def test_interpreter_by_invoked_name(tmp_path: Path) -> None:
    real = make_executable(tmp_path / "dash")
    (tmp_path / "sh").symlink_to(real)
    script = tmp_path / "run.sh"
    script.write_text("true\n")
    resolved = resolve_program([str(tmp_path / "sh"), str(script)])
    assert resolved.executable == real
    assert resolved.script == script


def test_unknown_program(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ClientError, match="no such program on PATH"):
        resolve_program(["no-such-program"])
    (tmp_path / "plain").write_text("not executable")
    with pytest.raises(ClientError, match="is not an executable file"):
        resolve_program([str(tmp_path / "plain")])
    with pytest.raises(ClientError, match="no program given"):
        resolve_program([])


def test_real_interpreter() -> None:
    resolved = resolve_program([sys.executable, "-c", "pass"])
    assert resolved.executable == Path(os.path.realpath(sys.executable))
    assert resolved.interpreter
    assert resolved.script is None
