"""What published SCONE policies write, read as SCONE reads it, and the normal form unchanged
for every session that does not use it."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from opencas.client.templates import fill_template
from opencas.crypto.keys import key_hash
from opencas.crypto.scone_keys import to_scone_key_hash
from opencas.policy.access import can_read
from opencas.policy.caller import Caller
from opencas.policy.errors import SessionError
from opencas.policy.hashing import session_hash
from opencas.policy.parse import parse_session, read_session, session_from_normal_form

HEAD = "name: s\nversion: '0.3'\n"
H1 = "ab" * 32
SCONE = Path(__file__).parent.parent.parent / "data" / "sessions" / "scone"
OTP_SECRET = "MGNVWS2SFOKEWZBASXYQNMBWOWDQTQR3"


def problems(text: str) -> list[str]:
    with pytest.raises(SessionError) as caught:
        parse_session(text, "t.yaml")
    return [f"{item.key}: {item.message}" for item in caught.value.problems]


@pytest.mark.parametrize(
    ("written", "normal"),
    [
        ("90 days", "90d"),
        ("90d", "90d"),
        ("1 day", "1d"),
        ("36 hours", "36h"),
        ("2 weeks", "14d"),
        ("1w", "7d"),
        ("1 year", "8766h"),
        ("10 Years", "87660h"),
        ("12h", "12h"),
    ],
)
def test_valid_for_in_scone_spellings(written: str, normal: str) -> None:
    session = parse_session(HEAD + f"secrets:\n  - {{name: c, kind: x509, valid_for: {written}}}\n")

    assert session.secrets[0].valid_for == normal
    assert session == parse_session(
        HEAD + f"secrets:\n  - {{name: c, kind: x509, valid_for: {normal}}}\n"
    )


@pytest.mark.parametrize(
    "name",
    ["registry.example:5000/team/app:1.2", "ghcr.example/x@sha256:00ff", "my image", "a" * 512],
)
def test_an_image_name_is_any_unique_name(name: str) -> None:
    session = parse_session(
        HEAD + f"images:\n  - name: '{name}'\nservices:\n  - name: s\n    image_name: '{name}'\n"
    )

    assert session.images[0].name == name
    assert session.services[0].image_name == name


@pytest.mark.parametrize("name", ["", "  ", "a\tb", "a" * 513])
def test_an_image_name_is_not_blank_long_or_with_control_characters(name: str) -> None:
    found = problems(HEAD + f'images:\n  - name: "{name}"\n')

    assert found[0].startswith("images[0].name: ")


def test_two_images_may_not_share_a_name() -> None:
    found = problems(HEAD + "images:\n  - name: r/x:1\n  - name: r/x:1\n")

    assert found == ["images[1].name: the name 'r/x:1' is already used by images[0]"]


def test_an_image_with_its_own_error_is_not_also_missing() -> None:
    found = problems(
        HEAD + "images:\n  - name: web\n    colour: red\nservices:\n  - name: s\n"
        "    image_name: web\n"
    )

    assert len(found) == 1
    assert found[0].startswith("images[0].colour: unknown key")


def test_an_image_that_is_not_written_is_missing() -> None:
    found = problems(HEAD + "services:\n  - name: s\n    image_name: web\n")

    assert found == ["services[0].image_name: no image called 'web'"]


def test_a_malformed_mrenclave_is_reported_once_as_written() -> None:
    found = problems(HEAD + "services:\n  - name: s\n    mrenclaves: [ABC]\n")

    assert found == [
        "services[0].mrenclaves[0]: expected 64 lowercase hexadecimal digits, got 'ABC'"
    ]
    assert problems(HEAD + "services:\n  - name: s\n    mrenclaves: []\n") == [
        "services[0].mrenclaves: expected at least one MRENCLAVE"
    ]


@pytest.mark.parametrize(("written", "normal"), [("/app/", "/app"), ("/a/b//", "/a/b"), ("/", "/")])
def test_pwd_may_end_with_a_slash(written: str, normal: str) -> None:
    session = parse_session(HEAD + f"services:\n  - name: s\n    pwd: {written}\n")

    assert session.services[0].pwd == normal


def test_null_keys_count_as_absent_everywhere() -> None:
    nulls = parse_session(
        HEAD + "predecessor: ~\nservices:\n  - name: s\n    pwd: ~\n    image_name:\n"
        "    environment:\n      A: ~\n    attestation: ~\nsecrets:\n  - name: x\n    kind: ascii\n"
        "    size: ~\n    export: ~\naccess_policy:\n  read: ~\nsecurity:\n  attestation:\n"
        "    mode: ~\n"
    )

    assert nulls == parse_session(
        HEAD + "services:\n  - name: s\n    environment: {}\nsecrets:\n  - {name: x, kind: ascii}\n"
    )


def test_read_back_fields_are_noted_and_ignored() -> None:
    read = read_session(
        HEAD + "creator: someone\npersistency: Permanent\nservices:\n  - name: s\n", "r.yaml"
    )

    assert read.session == parse_session(HEAD + "services:\n  - name: s\n")
    assert [(note.path, note.line, note.key) for note in read.notes] == [
        ("r.yaml", 3, "creator"),
        ("r.yaml", 4, "persistency"),
    ]
    assert "ignored" in read.notes[0].message


def test_scone_quoting_enclave_keys_are_noted_and_ignored() -> None:
    read = read_session(
        HEAD + "security:\n  attestation:\n    trusted_scone_qe_pubkeys: [aa]\n", "q.yaml"
    )

    assert read.session == parse_session(HEAD)
    (note,) = read.notes
    assert note.key == "security.attestation.trusted_scone_qe_pubkeys"
    assert "DCAP" in note.message


@pytest.mark.parametrize(
    ("text", "feature"),
    [
        ("version: '0.2'\n", "SCONE's older language"),
        ("security:\n  attestation:\n    mode: maa\n", "trusts no remote attestation service"),
        ("secrets:\n  - {name: a, kind: ascii, import_akv: {}}\n", "cloud key stores"),
    ],
)
def test_scone_only_features_are_refused_with_a_reason(text: str, feature: str) -> None:
    found = problems(("name: s\n" if text.startswith("version") else HEAD) + text)

    assert any(feature in item for item in found)


# --- one-time passwords -----------------------------------------------------------------------


def test_one_time_password_secrets_session_wide_and_per_service() -> None:
    session = parse_session(
        HEAD + "services:\n  - name: a\n    one_time_password_shared_secret: "
        f"{OTP_SECRET.lower()}\n  - name: b\nsecurity:\n  attestation:\n    mode: none\n"
        f"    one_time_password_shared_secret: '{OTP_SECRET[:8]} {OTP_SECRET[8:]}===='\n"
    )

    assert session.services[0].one_time_password_shared_secret == OTP_SECRET
    assert session.services[1].one_time_password_shared_secret is None
    assert session.security.attestation.one_time_password_shared_secret == OTP_SECRET
    form = session.normal_form()
    assert "one_time_password_shared_secret" not in form["services"][1]
    assert session_from_normal_form(form) == session


def test_without_a_one_time_password_the_normal_form_is_as_before() -> None:
    form = parse_session(HEAD + "services:\n  - name: a\n").normal_form()

    assert set(form["services"][0]) == {
        "name",
        "command",
        "environment",
        "pwd",
        "image_name",
        "platforms",
        "attestation",
    }
    assert set(form["security"]["attestation"]) == {"mode", "tolerate", "ignore_advisories"}
    # The hash this text had before one-time passwords existed.
    assert session_hash(parse_session(HEAD + "services:\n  - name: a\n")) == (
        "9836a04ec44df2ff935cf7e07cc6a6b04461fc3b81d2c9e27397654d5bcc8915"
    )


@pytest.mark.parametrize(
    "secret",
    ["NOT-BASE32!", "GEZDGNBV", "A" * 200, "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQG"],
)
def test_a_bad_one_time_password_secret_is_refused_without_showing_it(secret: str) -> None:
    found = problems(
        HEAD + f"services:\n  - name: a\n    one_time_password_shared_secret: {secret}\n"
    )

    assert len(found) == 1
    assert found[0].startswith("services[0].one_time_password_shared_secret: expected a base32")
    assert secret not in found[0]


# --- the corpus -------------------------------------------------------------------------------


def test_every_corpus_file_parses() -> None:
    variables = {"SESSION_NAME": "tpl", "SERVICE_NAME": "svc", "DATABASE": "db", "MEASUREMENT": H1}
    files = sorted(SCONE.glob("*.yaml"))
    assert len(files) >= 7
    for path in files:
        text = fill_template(path.read_text(), variables, str(path))
        session = parse_session(text, str(path), purpose="create")
        assert session_from_normal_form(session.normal_form()) == session


# --- SCONE's key hashes in access policies ----------------------------------------------------

SCONE_KEY_HASH = "3s1pm8W6Be6cxvAQRbRP5YXd9YuERAr7KswN97uGtoPkRW87x1"
SCONE_KEY_HASH_HEX = "78f49e94c4e6c13d6519d4002e5f7329442370145e4bde47dbdc8adfd378a35a"
SCONE_SIGNER = "LtLcbPVddnCkH36ZcRdgYsw4H8xDbYaFZfuefkDc25uq2qdjmM"
SCONE_SIGNER_PEM = (
    "-----BEGIN PUBLIC KEY-----\n"
    "MCowBQYDK2VwAyEAOsufQ7RCOXueVLQBpk7Y44GAaj+LzPbmHfdr/TPdlrE=\n"
    "-----END PUBLIC KEY-----\n"
)


def _policy(read: str, update: str) -> str:
    return HEAD + f"access_policy:\n  read:\n{read}  update:\n{update}"


def test_a_scone_key_hash_is_the_same_identity_as_its_hex_spelling() -> None:
    scone = parse_session(
        _policy(f"    - CREATOR\n    - {SCONE_KEY_HASH}\n", f"    - signer: {SCONE_SIGNER}\n")
    )
    pem = "\n".join("        " + line for line in SCONE_SIGNER_PEM.splitlines())
    ours = parse_session(
        _policy(
            f"    - CREATOR\n    - {SCONE_KEY_HASH_HEX.upper()}\n",
            f"    - signer: |\n{pem}\n",
        )
    )

    # Same rules, same normal form, same hash: the spelling is not part of the session.
    assert scone == ours
    assert session_hash(scone) == session_hash(ours)
    (_, key_rule) = scone.access_policy.read.rules  # type: ignore[union-attr]
    assert key_rule.key_hash == SCONE_KEY_HASH_HEX  # type: ignore[union-attr]


def test_a_scone_key_hash_decides_for_the_caller_with_that_key() -> None:
    reader = key_hash(ec.generate_private_key(ec.SECP256R1()))
    session = parse_session(HEAD + f"access_policy:\n  read: ['{to_scone_key_hash(reader)}']\n")

    assert can_read(session, Caller(reader), creator="cd" * 32)
    assert not can_read(session, Caller("ef" * 32), creator="cd" * 32)


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        (SCONE_KEY_HASH[:-1] + "2", "its checksum or version does not match"),
        # A well-formed Base58Check text of another version (SCONE's CAS software key prefix is
        # not a key hash): refused by version, not taken as something else.
        ("1" + SCONE_KEY_HASH[1:-1], "checksum or version"),
        ("not-a-hash", "or a key hash"),
    ],
)
def test_a_malformed_scone_key_hash_is_refused_with_its_reason(written: str, expected: str) -> None:
    found = problems(HEAD + f"access_policy:\n  read: ['{written}']\n")

    assert any(expected in item for item in found), found
