"""The CAS's files are its own: created 0600 in a 0700 directory whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from opencas.config.availability import load_availability_config
from opencas.service.cas import open_cas
from opencas.testing import write_config


@pytest.fixture(params=[0o000, 0o022])
def permissive_umask(request: pytest.FixtureRequest) -> Iterator[None]:
    previous = os.umask(request.param)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("permissive_umask")
def test_database_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    config = load_availability_config(write_config(tmp_path, 18081, 18766))
    database = config.database_path
    cas = open_cas(config)
    try:
        files = [
            database,
            database.with_name(database.name + "-wal"),
            database.with_name(database.name + "-shm"),
            database.with_name(database.name + ".lock"),
            database.with_name(database.name + ".key-store"),
        ]
        assert {path.name: _mode(path) for path in files} == {path.name: 0o600 for path in files}
    finally:
        cas.close()
    assert _mode(database) == 0o600


@pytest.mark.usefixtures("permissive_umask")
def test_database_directory_is_created_0700(tmp_path: Path) -> None:
    config = load_availability_config(write_config(tmp_path, 18081, 18766, "state/cas.db"))
    assert config.database_path.parent == tmp_path / "state"
    open_cas(config).close()
    assert _mode(tmp_path / "state") == 0o700
