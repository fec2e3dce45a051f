"""The upgrade in place on SQLite, without processes: the running side's answers to request
files, the answer file's two documents, and waiting for the database lock."""

from __future__ import annotations

import secrets
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from opencas.attestation.peer_admission import RegisteredUpgrade, SoftwareIdentity
from opencas.attestation.verifier import NO_COLLATERAL
from opencas.config.availability import AvailabilityConfig, load_availability_config
from opencas.errors import KeyStoreError
from opencas.platform.simulated import SimulatedPlatform
from opencas.service.cluster import KeyGiver
from opencas.service.key_handover import (
    HandoverAnswer,
    HandoverRefused,
    HandoverSecret,
    document_text,
    make_request,
    open_handover,
    own_identity,
)
from opencas.service.upgrade_in_place import (
    MAX_REQUEST_BYTES,
    HandoverRefusal,
    UpgradeAnswerer,
    UpgradeRefused,
    ask_running_instance,
    parse_answer_file,
    refusal_text,
    upgrade_answer_path,
    upgrade_request_path,
    wait_for_database,
)
from opencas.store import DatabaseInUse, DatabaseLock

NOW = datetime(2026, 12, 1, tzinfo=UTC)
OLD = "5e" * 32
NEW = "6f" * 32
SECRET = HandoverSecret(secrets.token_bytes(32), False, "ab" * 32, "cluster-1")


def _platform(directory: Path, measurement: str) -> SimulatedPlatform:
    return SimulatedPlatform.load_or_create(
        directory / "platform.key", measurement, sealing="measurement"
    )


def _answerer(
    tmp_path: Path, upgrades: list[RegisteredUpgrade], serving: SoftwareIdentity | None = None
) -> UpgradeAnswerer:
    giver = KeyGiver(
        _platform(tmp_path, OLD),
        NO_COLLATERAL,
        lambda: NOW,
        lambda: upgrades,
        lambda: serving,
        None,
        lambda: SECRET,
    )
    return UpgradeAnswerer(tmp_path / "cas.db", giver, "instance-1")


def _answer_file(tmp_path: Path) -> HandoverAnswer | HandoverRefusal:
    return parse_answer_file(upgrade_answer_path(tmp_path / "cas.db").read_bytes())


def test_a_registered_build_gets_the_key_through_the_files(tmp_path: Path) -> None:
    answerer = _answerer(tmp_path, [RegisteredUpgrade(measurement=NEW)])
    assert answerer.step() is False  # nothing asked: nothing answered, nothing written
    assert not upgrade_answer_path(tmp_path / "cas.db").exists()
    new = _platform(tmp_path, NEW)
    key, request = make_request(new, "upgrade")
    upgrade_request_path(tmp_path / "cas.db").write_text(document_text(request))

    assert answerer.step() is True
    assert not upgrade_request_path(tmp_path / "cas.db").exists()
    answer = _answer_file(tmp_path)
    assert isinstance(answer, HandoverAnswer)
    own = own_identity(new, at=NOW)
    opened = open_handover(answer, request, key, own, at=NOW, predecessors=(OLD,))
    assert opened.dmk == SECRET.dmk
    # Without naming the old build as its predecessor the new one takes nothing from it.
    with pytest.raises(HandoverRefused, match="predecessor"):
        open_handover(answer, request, key, own, at=NOW, predecessors=())


def test_an_unregistered_build_hears_why_and_gets_no_key(tmp_path: Path) -> None:
    answerer = _answerer(tmp_path, [])
    _, request = make_request(_platform(tmp_path, NEW), "upgrade")
    upgrade_request_path(tmp_path / "cas.db").write_text(document_text(request))

    assert answerer.step() is True
    refusal = _answer_file(tmp_path)
    assert isinstance(refusal, HandoverRefusal)
    assert (refusal.request_id, refusal.check) == (request.request_id, "software")
    assert NEW in refusal.reason
    assert "no registered upgrade names it" in refusal.reason


def test_a_build_is_checked_against_the_serving_build_not_the_answering_one(
    tmp_path: Path,
) -> None:
    # Another build took over since this instance started: its own build is no longer enough.
    serving = SoftwareIdentity("simulated", NEW, True, "UpToDate")
    answerer = _answerer(tmp_path, [], serving)
    _, request = make_request(_platform(tmp_path, OLD), "upgrade")
    upgrade_request_path(tmp_path / "cas.db").write_text(document_text(request))
    answerer.step()
    refusal = _answer_file(tmp_path)
    assert isinstance(refusal, HandoverRefusal)
    assert refusal.check == "software"


def test_a_join_request_is_not_an_upgrade_request(tmp_path: Path) -> None:
    answerer = _answerer(tmp_path, [RegisteredUpgrade(measurement=NEW)])
    _, request = make_request(_platform(tmp_path, NEW), "join")
    upgrade_request_path(tmp_path / "cas.db").write_text(document_text(request))
    answerer.step()
    refusal = _answer_file(tmp_path)
    assert isinstance(refusal, HandoverRefusal)
    assert refusal.check == "binding"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"not json", "malformed"),
        (b"{" + b" " * MAX_REQUEST_BYTES + b"}", f"larger than {MAX_REQUEST_BYTES} bytes"),
    ],
)
def test_a_bad_request_file_is_refused_by_name(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    answerer = _answerer(tmp_path, [])
    upgrade_request_path(tmp_path / "cas.db").write_bytes(content)
    assert answerer.step() is True
    refusal = _answer_file(tmp_path)
    assert isinstance(refusal, HandoverRefusal)
    assert (refusal.request_id, refusal.check) == (None, "format")
    assert expected in refusal.reason


def test_the_answer_file_holds_an_answer_or_a_refusal_and_nothing_else() -> None:
    refused = HandoverRefused("tcb", "the peer's TCB is worse", "0f" * 16)
    refusal = parse_answer_file(refusal_text(refused).encode())
    assert refusal == HandoverRefusal(
        request_id="0f" * 16, check="tcb", reason="the peer's TCB is worse"
    )
    for bad in (
        b"[]",
        b'{"format": "opencas-key-handover-refusal/v1", "request_id": null, "check": "x"}',
        b'{"format": "opencas-key-handover-answer/v1"}',
        b'{"format": "something-else"}',
    ):
        with pytest.raises(HandoverRefused) as caught:
            parse_answer_file(bad)
        assert caught.value.check == "format"


def test_the_lock_is_taken_once_its_holder_let_it_go(tmp_path: Path) -> None:
    holder = DatabaseLock(tmp_path / "cas.db")
    holder.acquire()
    threading.Timer(0.3, holder.release).start()
    taken = wait_for_database(tmp_path / "cas.db", "1234", timeout=30)
    try:
        assert taken.held
    finally:
        taken.release()


def test_waiting_for_the_lock_ends_and_says_what_is_kept(tmp_path: Path) -> None:
    with DatabaseLock(tmp_path / "cas.db"), pytest.raises(DatabaseInUse) as caught:
        wait_for_database(tmp_path / "cas.db", "1234", timeout=0.3)
    assert "(pid 1234) did not stop within 0.3 seconds" in caught.value.message
    assert "cas.db.key-store.next" in caught.value.message


def _config(tmp_path: Path) -> AvailabilityConfig:
    path = tmp_path / "cas.toml"
    path.write_text('[database]\npath = "cas.db"\n\n[platform]\nkind = "simulated"\n')
    return load_availability_config(path)


def test_asking_gets_the_key_from_an_answering_instance(tmp_path: Path) -> None:
    answerer = _answerer(tmp_path, [])
    answerer.start()
    try:
        # The same build asks (the rule admits it): what travels is what the giver hands over.
        secret = ask_running_instance(
            _config(tmp_path), _platform(tmp_path, OLD), "1234", clock=lambda: NOW, timeout=30
        )
    finally:
        answerer.stop()
    assert secret == SECRET
    assert sorted(p.name for p in tmp_path.iterdir() if "upgrade-" in p.name) == []


def test_asking_a_refusing_instance_says_why(tmp_path: Path) -> None:
    answerer = _answerer(tmp_path, [])
    answerer.start()
    try:
        with pytest.raises(UpgradeRefused) as caught:
            ask_running_instance(
                _config(tmp_path), _platform(tmp_path, NEW), "1234", clock=lambda: NOW, timeout=30
            )
    finally:
        answerer.stop()
    assert "the running instance (pid 1234) refused this build the database key: software" in (
        caught.value.message
    )


def test_asking_nobody_ends_and_leaves_no_request(tmp_path: Path) -> None:
    config = _config(tmp_path)
    with pytest.raises(KeyStoreError, match=r"\(pid 1234\) did not answer the upgrade request"):
        ask_running_instance(config, _platform(tmp_path, NEW), "1234", timeout=0.3)
    assert not upgrade_request_path(tmp_path / "cas.db").exists()


def test_without_a_timeout_asking_waits_as_long_as_the_config_says(tmp_path: Path) -> None:
    path = tmp_path / "cas.toml"
    path.write_text(
        '[database]\npath = "cas.db"\n\n[platform]\nkind = "simulated"\n\n'
        "[limits]\nupgrade_answer_timeout = 0.3\n"
    )
    config = load_availability_config(path)
    began = time.monotonic()
    with pytest.raises(KeyStoreError, match=r"within 0\.3 seconds"):
        ask_running_instance(config, _platform(tmp_path, NEW), "1234")
    assert 0.3 <= time.monotonic() - began < 30
    assert _config(tmp_path).upgrade_answer_timeout == 60.0


def test_one_build_at_a_time_asks(tmp_path: Path) -> None:
    with DatabaseLock(tmp_path / "cas.db.upgrade"), pytest.raises(KeyStoreError) as caught:
        ask_running_instance(_config(tmp_path), _platform(tmp_path, NEW), "1234", timeout=0.3)
    assert "is asking the running instance for the database key" in caught.value.message
    assert not upgrade_request_path(tmp_path / "cas.db").exists()
