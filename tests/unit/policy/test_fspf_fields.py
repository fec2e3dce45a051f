"""A service's protection file (``fspf_path``, ``fspf_key``, ``fspf_tag``) as SCONE writes it:
all three or none, hex in either case, the key never quoted, and the normal form of a service
without one unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from opencas.policy.errors import SessionError
from opencas.policy.hashing import session_hash
from opencas.policy.parse import parse_session, session_from_normal_form

KEY = "5E0C2D7B9A1F48E3B6C5D4A3F2E1D0C9B8A7F6E5D4C3B2A1908F7E6D5C4B3A29"
TAG = "4f1e2d3c4b5a69788796a5b4c3d2e1f0"
CORPUS = Path(__file__).parent.parent.parent / "data" / "sessions" / "scone"


def session(fields: str) -> str:
    return f'name: s\nversion: "0.3"\nservices:\n  - name: app\n{fields}'


def problems(text: str) -> list[str]:
    with pytest.raises(SessionError) as caught:
        parse_session(text, "t.yaml")
    return [f"{item.key}: {item.message}" for item in caught.value.problems]


def test_the_three_fields_are_read_and_the_key_kept_in_lowercase() -> None:
    parsed = parse_session(
        session(f"    fspf_path: /app/fspf\n    fspf_key: {KEY}\n    fspf_tag: {TAG.upper()}\n")
    )
    service = parsed.services[0]

    assert (service.fspf_path, service.fspf_key, service.fspf_tag) == (
        "/app/fspf",
        KEY.lower(),
        TAG,
    )
    assert KEY.lower() not in repr(service)
    assert session_from_normal_form(parsed.normal_form()) == parsed


def test_a_service_without_a_protection_file_keeps_its_normal_form() -> None:
    plain = parse_session(session("    command: [app]\n"))

    assert "fspf" not in str(plain.normal_form())
    assert session_hash(plain) == session_hash(parse_session(session("    command: app\n")))


def test_one_field_alone_names_the_missing_ones() -> None:
    assert problems(session("    fspf_path: /app/fspf\n")) == [
        "services[0].fspf_path: a protection file needs 'fspf_key', 'fspf_tag' too"
    ]


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("fspf_key", KEY[:-2], "an fspf_key is 64 hexadecimal digits"),
        ("fspf_key", "zz" + KEY[2:], "an fspf_key is 64 hexadecimal digits"),
        ("fspf_tag", TAG + "00", "an fspf_tag is 32 hexadecimal digits"),
        ("fspf_path", "app/fspf", "absolute"),
    ],
)
def test_a_malformed_field_is_refused_without_quoting_the_key(
    field: str, value: str, fragment: str
) -> None:
    fields = {"fspf_path": "/app/fspf", "fspf_key": KEY, "fspf_tag": TAG, field: value}
    text = session("".join(f"    {name}: {item}\n" for name, item in fields.items()))

    found = problems(text)

    assert len(found) == 1
    assert found[0].startswith(f"services[0].{field}: ")
    assert fragment in found[0]
    assert KEY[4:-4].lower() not in found[0].lower()


def test_the_corpus_fspf_service_parses() -> None:
    parsed = parse_session((CORPUS / "fspf-service.yaml").read_text())

    assert parsed.services[0].fspf_path == "/opt/shop/fspf"
    assert parsed.services[0].pwd == "/opt/shop/app"
