"""The workload binding: config ids and the report data a workload's evidence must carry."""

from __future__ import annotations

import pytest

from opencas.attestation.workload_binding import ConfigId, workload_report_data
from opencas.crypto.canonical import canonical_sha512

NONCE = "ab" * 32


@pytest.mark.parametrize(
    ("text", "session", "service"),
    [("s/svc", "s", "svc"), ("team/app/web", "team/app", "web"), ("a.b~c/x-y_z", "a.b~c", "x-y_z")],
)
def test_the_last_slash_separates_session_and_service(
    text: str, session: str, service: str
) -> None:
    config_id = ConfigId.parse(text)
    assert (config_id.session, config_id.service) == (session, service)
    assert str(config_id) == text
    assert config_id == ConfigId(session, service)


def test_a_config_id_without_slash_says_so() -> None:
    with pytest.raises(ValueError, match=r"expected SESSION/SERVICE, got 'nosplit' \(no '/'\)"):
        ConfigId.parse("nosplit")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("/svc", "may not be empty"),
        ("session/", "not a valid name"),
        ("a/../b/svc", "'.' or '..' segment"),
        ("a//b/svc", "empty segment"),
        ("s/sv c", "not a valid name"),
        ("s/..", "not a valid name"),
        ("s p/svc", "not a valid session name"),
    ],
)
def test_names_follow_the_session_language(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as refused:
        ConfigId.parse(text)
    assert str(refused.value).startswith("expected SESSION/SERVICE: ")


def test_constructing_checks_the_names_too() -> None:
    with pytest.raises(ValueError, match="not a valid name"):
        ConfigId("s", "a/b")


def test_config_ids_are_frozen_and_hashable() -> None:
    config_id = ConfigId("s", "svc")
    with pytest.raises(AttributeError):
        config_id.service = "other"  # type: ignore[misc]
    assert {config_id, ConfigId.parse("s/svc")} == {config_id}


def test_report_data_binds_the_three_strings() -> None:
    config_id = ConfigId.parse("team/app/api")
    data = workload_report_data(config_id, NONCE, "cHVi")
    assert len(data) == 64
    assert data == canonical_sha512(
        {"config_id": "team/app/api", "nonce": NONCE, "public_key": "cHVi"}
    )
    assert data != workload_report_data(config_id, NONCE, "cHVj")
    assert data != workload_report_data(config_id, "cd" * 32, "cHVi")
    assert data != workload_report_data(ConfigId.parse("team/app/other"), NONCE, "cHVi")
