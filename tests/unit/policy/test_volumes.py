"""Volumes in sessions: how they are written, mapped, checked, hashed and shared."""

from __future__ import annotations

import pytest

from opencas.policy.errors import SessionError
from opencas.policy.parse import parse_session, session_from_normal_form
from opencas.policy.volumes import (
    check_volume_exports_claimed,
    check_volume_import,
    unpinned_volume_export_targets,
)

HEAD = "name: s\nversion: '0.3'\n"
KEY = "5F6F9197EC19D4CBAD73D4ED06602D84C1136CC1ECD1144ED0E5DDA6D13723A1"
TAG = "ab" * 32
MAPPED = """\
services:
  - name: app
    image_name: img
images:
  - name: img
    volumes:
      - name: data
        path: /srv/data
"""


def problems(text: str) -> list[tuple[str, str]]:
    with pytest.raises(SessionError) as raised:
        parse_session(text, "s.yaml")
    return [(item.key, item.message) for item in raised.value.problems]


def test_a_cas_managed_volume_mapped_into_an_image() -> None:
    session = parse_session(HEAD + MAPPED + "volumes:\n  - name: data\n")

    (volume,) = session.volumes
    assert (volume.name, volume.fspf_key, volume.fspf_tag, volume.import_) == (
        "data",
        None,
        None,
        None,
    )
    image = session.image("img")
    assert image is not None
    assert [(item.name, item.path) for item in image.volumes] == [("data", "/srv/data")]
    assert session_from_normal_form(session.normal_form()) == session


def test_a_given_key_and_tag_are_kept_in_lowercase() -> None:
    text = HEAD + f"volumes:\n  - name: data\n    fspf_key: '{KEY}'\n    fspf_tag: '{TAG}'\n"

    (volume,) = parse_session(text).volumes

    assert volume.fspf_key == KEY.lower()
    assert volume.fspf_tag == TAG


def test_a_session_without_volumes_keeps_its_normal_form() -> None:
    session = parse_session(HEAD + "images:\n  - name: img\n")

    form = session.normal_form()
    assert list(form) == [
        "name",
        "version",
        "predecessor",
        "services",
        "secrets",
        "images",
        "access_policy",
        "security",
    ]
    assert list(form["images"][0]) == ["name", "injection_files"]


@pytest.mark.parametrize(
    ("body", "key", "fragment"),
    [
        ("volumes:\n  - name: d\n    fspf_tag: '" + TAG + "'\n", "volumes[0].fspf_tag", "needs"),
        ("volumes:\n  - name: d\n    fspf_key: '12'\n", "volumes[0].fspf_key", "64 hex"),
        ("volumes:\n  - name: a.b\n", "volumes[0].name", "volume name"),
        ("volumes:\n  - name: d\n  - name: d\n", "volumes[1].name", "already used"),
        (
            "volumes:\n  - name: d\n    import: {session: x, volume: v}\n    export: "
            "[{session: y}]\n",
            "volumes[0].export",
            "imported volume",
        ),
        ("volumes:\n  - name: d\n    mount: /x\n", "volumes[0].mount", "unknown key"),
        (MAPPED, "images[0].volumes[0].name", "no volume called 'data'"),
        (
            MAPPED + "      - name: data\n        path: /srv/other\nvolumes:\n  - name: data\n",
            "images[0].volumes[1].name",
            "mapped twice",
        ),
        (
            MAPPED + "      - name: more\n        path: /srv/data/inner\nvolumes:\n  - name: data\n"
            "  - name: more\n",
            "images[0].volumes[1].path",
            "overlaps images[0].volumes[0].path",
        ),
        (
            MAPPED + "    injection_files:\n      - path: /srv/data/conf\n        content: x\n"
            "volumes:\n  - name: data\n",
            "images[0].volumes[0].path",
            "overlaps images[0].injection_files[0]",
        ),
        (
            "images:\n  - name: i\n    volumes:\n      - {name: d, path: rel}\n",
            "images[0].volumes[0].path",
            "absolute",
        ),
        ("services:\n  - name: a\n    volumes: []\n", "services[0].volumes", "its image"),
    ],
)
def test_volume_errors_name_the_key(body: str, key: str, fragment: str) -> None:
    found = problems(HEAD + body)

    assert any(path == key and fragment in message for path, message in found), found


def test_a_bad_key_is_never_shown() -> None:
    secret = "zz" + KEY[2:]

    found = problems(HEAD + f"volumes:\n  - name: d\n    fspf_key: '{secret}'\n")

    assert found
    assert all(secret not in message and secret.lower() not in message for _, message in found)


EXPORTER = HEAD.replace("name: s", "name: exporter") + "volumes:\n  - name: data\n    export:\n"
IMPORTER = HEAD.replace("name: s", "name: importer") + (
    "volumes:\n  - name: mine\n    import: {session: exporter, volume: data}\n"
)


def test_an_import_is_allowed_by_an_export_to_the_importer() -> None:
    exporter = parse_session(EXPORTER + "      - session: importer\n")
    importer = parse_session(IMPORTER)
    (volume,) = importer.volumes
    assert volume.import_ is not None

    check_volume_import(importer, "mine", volume.import_, exporter, "00" * 32, "11" * 32)


@pytest.mark.parametrize(
    ("export", "fragment"),
    [
        ("      - session: someone-else\n", "not exported to session 'importer'"),
        ("      - session: importer\n        session_hash: '" + "22" * 32 + "'\n", "only at"),
    ],
)
def test_an_import_the_exporter_does_not_allow_is_refused(export: str, fragment: str) -> None:
    exporter = parse_session(EXPORTER + export)
    importer = parse_session(IMPORTER)
    spec = importer.volumes[0].import_
    assert spec is not None

    with pytest.raises(SessionError) as raised:
        check_volume_import(importer, "mine", spec, exporter, "00" * 32, "11" * 32)

    assert fragment in raised.value.message
    assert raised.value.problems[0].key == "volumes[0].import"


def test_an_import_pinned_to_another_exporter_hash_is_refused() -> None:
    exporter = parse_session(EXPORTER + "      - session: importer\n")
    importer = parse_session(
        IMPORTER.replace("volume: data}", f"volume: data, session_hash: '{'33' * 32}'}}")
    )
    spec = importer.volumes[0].import_
    assert spec is not None

    with pytest.raises(SessionError, match="pinned to session hash"):
        check_volume_import(importer, "mine", spec, exporter, "00" * 32, "11" * 32)


def test_an_unpinned_export_to_a_session_nobody_holds_is_refused_at_its_line() -> None:
    text = EXPORTER + "      - session: importer\n      - namespace: team\n"
    exporter = parse_session(text)
    assert unpinned_volume_export_targets(exporter) == {"importer", "team"}

    with pytest.raises(SessionError) as raised:
        check_volume_exports_claimed(exporter, {"team"}, text)

    (problem,) = raised.value.problems
    assert problem.key == "volumes[0].export[0]"
    assert problem.line == 6
    assert "whoever creates it first would receive the volume's key" in problem.message
    check_volume_exports_claimed(exporter, {"team", "importer"}, text)


def test_a_pinned_export_needs_no_importer() -> None:
    exporter = parse_session(
        EXPORTER + f"      - session: importer\n        session_hash: '{TAG}'\n"
    )

    assert unpinned_volume_export_targets(exporter) == frozenset()
    check_volume_exports_claimed(exporter, set(), None)
