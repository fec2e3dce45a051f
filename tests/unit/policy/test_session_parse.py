"""parse_session: the session language, its synonyms, its errors (path + line:column), and the
normal form's round trip."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from opencas.crypto.canonical import canonical_json
from opencas.crypto.keys import key_hash
from opencas.crypto.pem import load_certificate_pem, load_private_key_pem
from opencas.crypto.x509 import certificate_key_hash
from opencas.policy.errors import SessionError
from opencas.policy.hashing import session_hash
from opencas.policy.model import (
    AllRule,
    AnyRule,
    AtLeastRule,
    AttestationVariant,
    CreatorRule,
    ExportRule,
    ImportSpec,
    KeyRule,
    NoneRule,
    Session,
    Signer,
    SignerRule,
)
from opencas.policy.parse import Purpose, parse_session, session_from_normal_form
from opencas.sources.problems import Problem

SESSIONS = Path(__file__).parents[2] / "data" / "sessions"
SAMPLES = sorted(SESSIONS.glob("*.yaml"))
KEYS = SESSIONS / "keys"
HEAD = "name: s\nversion: '0.3'\n"
H1 = "a" * 64
H2 = "b" * 64


def parse(body: str, **options: Any) -> Session:
    return parse_session(HEAD + body, "t.yaml", **options)


def problems(text: str, **options: Any) -> list[Problem]:
    with pytest.raises(SessionError) as caught:
        parse_session(text, "t.yaml", **options)
    return list(caught.value.problems)


def problem(text: str, **options: Any) -> Problem:
    found = problems(text, **options)
    assert len(found) == 1, found
    return found[0]


def pem(name: str) -> str:
    return (KEYS / f"{name}.crt.pem").read_text()


def indented(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in text.strip().splitlines())


def cert_hash(name: str) -> str:
    return certificate_key_hash(load_certificate_pem(pem(name).encode()))


# --- the sample sessions -----------------------------------------------------------------------


@pytest.mark.parametrize("path", SAMPLES, ids=lambda path: path.name)
def test_every_sample_parses_and_round_trips(path: Path) -> None:
    session = parse_session(path.read_text(), path.name)

    stored = json.loads(json.dumps(session.normal_form()))
    again = session_from_normal_form(stored)

    assert again == session
    assert session_hash(again) == session_hash(session)
    assert again.normal_form() == stored


def test_the_samples_cover_what_the_readme_promises() -> None:
    names = {path.name for path in SAMPLES}
    readme = (SESSIONS / "README.md").read_text()

    assert len(names) >= 10
    for name in names:
        assert f"`{name}`" in readme


def test_sample_hash_pins_match() -> None:
    def load(name: str) -> Session:
        return parse_session((SESSIONS / name).read_text(), name)

    exporter, importer, worker = (
        load("exporter.yaml"),
        load("importer.yaml"),
        load("team-worker.yaml"),
    )
    password = exporter.secret("db-password")
    ca_cert = exporter.secret("ca-cert")
    token = worker.secret("api-token")

    assert password is not None
    assert ca_cert is not None
    assert token is not None
    assert token.import_ is not None
    assert password.export[0].session_hash == session_hash(importer)
    assert ca_cert.export[0].session_hash == session_hash(importer)
    assert token.import_.session_hash == session_hash(exporter)


def test_sample_governance_names_the_sample_keys() -> None:
    session = parse_session((SESSIONS / "governance.yaml").read_text())
    signers = tuple(SignerRule(key_hash=cert_hash(f"signer-{n}")) for n in (1, 2, 3))

    assert session.access_policy.update == AtLeastRule(count=2, rules=signers)
    assert session.access_policy.create_sessions == AllRule(rules=signers)
    assert session.access_policy.read == AtLeastRule(
        count=1, rules=(CreatorRule(), KeyRule(key_hash=cert_hash("reader")))
    )
    for name in ("signer-1", "reader"):
        key = load_private_key_pem((KEYS / f"{name}.key.pem").read_bytes())
        assert key_hash(key) == cert_hash(name)


# --- the language, construct by construct ------------------------------------------------------


def test_minimal_session_has_every_default() -> None:
    session = parse("")

    assert session == Session(name="s")
    assert session.access_policy.read == CreatorRule()
    assert session.security.attestation.mode == "hardware"
    assert session.predecessor is None


@pytest.mark.parametrize("version", ["'0.3'", "0.3", "'0.3.0'", "'0.3.10'", '"0.3.7"'])
def test_version_spellings(version: str) -> None:
    assert parse_session(f"name: s\nversion: {version}\n").version == "0.3"


@pytest.mark.parametrize("version", ["0.4", "'0.3.x'", "3", "'0.30'", "true"])
def test_other_versions_are_refused(version: str) -> None:
    found = problem(f"name: s\nversion: {version}\n")

    assert (found.key, found.line, found.column) == ("version", 2, 10)
    assert "unsupported session language version" in found.message


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("a", True),
        ("team/app-1_x.y~z", True),
        ("a" * 512, True),
        ("a" * 513, False),
        ("a//b", False),
        ("/a", False),
        ("a/", False),
        ("a/../b", False),
        ("a b", False),
        ("", False),
    ],
)
def test_session_names(name: str, ok: bool) -> None:
    text = f"name: {json.dumps(name)}\nversion: '0.3'\n"
    if ok:
        assert parse_session(text).name == name
    else:
        found = problem(text)
        assert (found.key, found.line, found.column) == ("name", 1, 7)


def test_command_string_is_split_like_a_shell() -> None:
    session = parse(
        "services:\n  - name: a\n    command: prog -x 'two words' \"$$SCONE::k$$\" --a=b\n"
        "secrets:\n  - name: k\n    kind: ascii\n"
    )

    service = session.services[0]
    assert service.command == ("prog", "-x", "two words", "$$CAS::k$$", "--a=b")


def test_command_list_is_kept_and_placeholders_take_their_canonical_spelling() -> None:
    session = parse(
        "services:\n  - name: a\n    command: [prog, 'a b', '$$SCONE::k:hex$$']\n"
        "secrets:\n  - name: k\n    kind: binary\n"
    )

    assert session.services[0].command == ("prog", "a b", "$$CAS::k:hex$$")


def test_a_command_with_unbalanced_quotes_is_refused() -> None:
    found = problem(HEAD + "services:\n  - name: a\n    command: prog 'open\n")

    assert (found.key, found.line, found.column) == ("services[0].command", 5, 14)
    assert "cannot be split" in found.message


def test_quotes_cannot_join_text_into_an_unchecked_placeholder() -> None:
    found = problem(HEAD + "services:\n  - name: a\n    command: prog '$$'CAS::nope$$\n")

    assert "names no secret" in found.message


def test_environment_pwd_image_and_platforms() -> None:
    session = parse(
        "services:\n"
        "  - name: a\n"
        "    environment: {HOME: /root, K: 'x=$$CAS::k$$', EMPTY: ''}\n"
        "    pwd: /work/$$CAS::k$$\n"
        "    image_name: img\n"
        f"    platforms: ['{H2.upper()}', {H1}, {H1}]\n"
        "images:\n  - name: img\n"
        "secrets:\n  - name: k\n    kind: ascii\n"
    )

    service = session.services[0]
    assert service.environment == {"HOME": "/root", "K": "x=$$CAS::k$$", "EMPTY": ""}
    assert service.pwd == "/work/$$CAS::k$$"
    assert service.image_name == "img"
    assert service.platforms == (H1, H2)


def test_environment_values_must_be_strings() -> None:
    found = problem(HEAD + "services:\n  - name: a\n    environment:\n      PORT: [a]\n")

    assert found == Problem(
        "t.yaml", 6, 13, "expected a string, got a sequence", "services[0].environment.PORT"
    )


@pytest.mark.parametrize("written", ["8080", "true", "True", "1.50", "1e3", "0x1F", "-0", "false"])
def test_unquoted_numbers_and_booleans_are_environment_text_as_written(written: str) -> None:
    service = parse(f"services:\n  - name: a\n    environment: {{PORT: {written}, B: x}}\n")

    assert service.services[0].environment == {"PORT": written, "B": "x"}


def test_a_null_environment_value_is_absent() -> None:
    service = parse("services:\n  - name: a\n    environment:\n      A: ~\n      B: x\n")

    assert service.services[0].environment == {"B": "x"}


def test_version_0_2_is_refused_with_its_reason() -> None:
    found = problem("name: s\nversion: '0.2'\n")

    assert (found.key, found.line, found.column) == ("version", 2, 10)
    assert "SCONE's older language" in found.message


def test_environment_names_are_checked() -> None:
    found = problem(HEAD + "services:\n  - name: a\n    environment:\n      1BAD: x\n")

    assert found.key == "services[0].environment.1BAD"
    assert "not a valid environment variable name" in found.message


def test_attestation_single_mapping_and_list() -> None:
    single = parse(f"services:\n  - name: a\n    attestation:\n      mrenclave: {H1.upper()}\n")
    listed = parse(f"services:\n  - name: a\n    attestation:\n      - mrenclave: [{H1}]\n")

    assert single.services[0].attestation == (AttestationVariant(mrenclave=(H1,)),)
    assert single == listed


def test_legacy_mrenclaves_become_a_variant_or_merge_into_the_only_one() -> None:
    alone = parse(f"services:\n  - name: a\n    mrenclaves: [{H2}, {H1}]\n")
    merged = parse(
        f"services:\n  - name: a\n    mrenclaves: [{H2}]\n    attestation:\n      mrenclave: {H1}\n"
    )

    assert alone.services[0].attestation == (AttestationVariant(mrenclave=(H1, H2)),)
    assert merged == alone


def test_legacy_mrenclaves_with_several_variants_is_refused() -> None:
    found = problem(
        HEAD + f"services:\n  - name: a\n    mrenclaves: [{H2}]\n"
        f"    attestation:\n      - mrenclave: {H1}\n      - mrenclave: {H2}\n"
    )

    assert (found.key, found.line, found.column) == ("services[0].mrenclaves", 5, 5)


def test_tdx_snp_signer_and_simulated_variants() -> None:
    h96 = "c" * 96
    session = parse(
        "services:\n  - name: a\n    attestation:\n"
        f"      - {{mrtd: {h96}, rtmr0: {h96}, rtmr3: {h96}}}\n"
        f"      - {{measurement: {h96}, host_data: {H1}}}\n"
        f"      - signer: {{mrsigner: {H1}, isvprodid: 2, isvsvn_min: 1, isvsvn_max: 9}}\n"
        f"      - simulated_measurement: {H2}\n"
    )

    tdx, snp, sgx, simulated = session.services[0].attestation
    assert (tdx.mrtd, tdx.rtmr0, tdx.rtmr1, tdx.rtmr3) == (h96, h96, None, h96)
    assert (snp.measurement, snp.host_data) == (h96, H1)
    assert sgx.signer == Signer(mrsigner=H1, isvprodid=2, isvsvn_min=1, isvsvn_max=9)
    assert simulated.simulated_measurement == (H2,)


@pytest.mark.parametrize(
    ("variant", "path", "fragment"),
    [
        ("{}", "services[0].attestation", "must constrain something"),
        ("{mrtd: abc}", "services[0].attestation.mrtd", "expected 96 lowercase hexadecimal"),
        (f"{{mrenclave: [{H1}, xyz]}}", "services[0].attestation.mrenclave[1]", "expected 64"),
        ("{mrenclave: []}", "services[0].attestation.mrenclave", "at least one measurement"),
        (
            f"{{signer: {{mrsigner: {H1}, isvsvn: 1, isvsvn_min: 0}}}}",
            "services[0].attestation.signer",
            "excludes isvsvn_min",
        ),
        (
            f"{{signer: {{mrsigner: {H1}, isvsvn_min: 5, isvsvn_max: 4}}}}",
            "services[0].attestation.signer",
            "greater than isvsvn_max",
        ),
        (
            f"{{signer: {{mrsigner: {H1}, isvprodid: 70000}}}}",
            "services[0].attestation.signer.isvprodid",
            "0 to 65535",
        ),
        (
            "{signer: {isvprodid: 1}}",
            "services[0].attestation.signer.mrsigner",
            "required key is missing",
        ),
        (
            "{mrenclav: x}",
            "services[0].attestation.mrenclav",
            "unknown key; expected one of: mrenclave",
        ),
    ],
)
def test_attestation_errors(variant: str, path: str, fragment: str) -> None:
    found = problem(HEAD + f"services:\n  - name: a\n    attestation: {variant}\n")

    assert found.key == path
    assert found.line == 5
    assert found.column is not None
    assert fragment in found.message


def test_secret_defaults_are_written_out() -> None:
    session = parse(
        "secrets:\n"
        "  - {name: a, kind: ascii}\n"
        "  - {name: b, kind: binary, size: 64}\n"
        "  - {name: c, kind: private-key}\n"
        "  - {name: d, kind: x509-ca}\n"
        "  - {name: e, kind: x509, private_key: c, issuer: d}\n"
        "  - {name: f, kind: ascii, value: given}\n"
    )

    sizes = {s.name: (s.size, s.key_type) for s in session.secrets}
    assert sizes == {
        "a": (20, None),
        "b": (64, None),
        "c": (None, "P-256"),
        "d": (None, "P-256"),
        "e": (None, None),
        "f": (None, None),
    }


def test_secrets_are_sorted_by_name() -> None:
    session = parse("secrets:\n  - {name: zz, kind: ascii}\n  - {name: aa, kind: ascii}\n")

    assert [s.name for s in session.secrets] == ["aa", "zz"]


def test_certificate_names_legacy_dns_and_canonical_san() -> None:
    session = parse(
        "secrets:\n  - name: c\n    kind: x509\n"
        "    san: ['DNS:Web.Example.COM', 'ip:::0:1', 'ip:10.0.0.1']\n"
        "    dns: [web.example.com, Other.example]\n"
    )

    assert session.secrets[0].san == (
        "dns:web.example.com",
        "ip:::1",
        "ip:10.0.0.1",
        "dns:other.example",
    )


def test_certificate_dns_names_may_carry_a_wildcard_and_underscores() -> None:
    session = parse(
        "secrets:\n  - name: c\n    kind: x509\n"
        "    san: ['dns:*.Web.Example', 'dns:_svc.example', 'dns:10.0.0.300']\n"
    )

    assert session.secrets[0].san == ("dns:*.web.example", "dns:_svc.example", "dns:10.0.0.300")


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("a.*.example", "'a.*.example' is not a valid DNS name: a wildcard '*' may only be"),
        ("*", "'*' is not a valid DNS name"),
        ("web.example.", "'web.example.' is not a valid DNS name: empty label"),
        ("bad host", "'bad host' is not a valid DNS name: label 'bad host' may hold only"),
    ],
)
def test_certificate_dns_names_follow_the_san_grammar(name: str, fragment: str) -> None:
    found = problem(HEAD + f"secrets:\n  - {{name: c, kind: x509, san: ['dns:{name}']}}\n")

    assert found.key == "secrets[0].san[0]"
    assert fragment in found.message


@pytest.mark.parametrize(
    ("secret", "path", "fragment"),
    [
        ("{name: a}", "secrets[0].kind", "required key is missing; expected one of: ascii"),
        ("{name: a, kind: text}", "secrets[0].kind", "unknown kind 'text'"),
        ("{name: a.b, kind: ascii}", "secrets[0].name", "no dots"),
        ("{name: a, kind: ascii, size: 0}", "secrets[0].size", "from 1 to 4096"),
        ("{name: a, kind: ascii, size: '20'}", "secrets[0].size", "expected an integer"),
        (
            "{name: a, kind: x509, size: 3}",
            "secrets[0].size",
            "does not apply to a secret of kind x509",
        ),
        ("{name: a, kind: ascii, value: x, size: 3}", "secrets[0].size", "exclude each other"),
        (
            "{name: a, kind: private-key, key_type: P-521}",
            "secrets[0].key_type",
            "unknown value 'P-521'",
        ),
        ("{name: a, kind: ascii, migrate: true}", "secrets[0].migrate", "does not apply"),
        ("{name: a, kind: binary, value: '!!'}", "secrets[0].value", "standard base64"),
        ("{name: a, kind: x509, valid_for: 1 month}", "secrets[0].valid_for", "'90 days'"),
        ("{name: a, kind: x509, valid_for: 101 years}", "secrets[0].valid_for", "100 years"),
        (
            "{name: a, kind: x509, san: [web.example]}",
            "secrets[0].san[0]",
            "'dns:NAME' or 'ip:ADDRESS'",
        ),
        (
            "{name: a, kind: x509, endpoint: both}",
            "secrets[0].endpoint",
            "expected one of: server, client",
        ),
        ("{name: a, kind: private-key, value: nope}", "secrets[0].value", "one PEM private key"),
        (
            "{name: a, import: {session: x, secret: y}, size: 3}",
            "secrets[0].size",
            "imported secret is made by its exporter",
        ),
        ("{name: a, import: {session: x}}", "secrets[0].import.secret", "required key is missing"),
        (
            "{name: a, kind: ascii, export: [{namespace: t, session_hash: " + H1 + "}]}",
            "secrets[0].export[0].session_hash",
            "needs 'session'",
        ),
        (
            "{name: a, kind: ascii, export: [{}]}",
            "secrets[0].export[0]",
            "exactly one of 'session' and 'namespace'",
        ),
        (
            "{name: a, kind: ascii, export: [{session: t}, {session: t}]}",
            "secrets[0].export[1]",
            "listed twice",
        ),
    ],
)
def test_secret_errors(secret: str, path: str, fragment: str) -> None:
    found = problem(HEAD + f"secrets:\n  - {secret}\n")

    assert found.key == path
    assert found.line == 4
    assert found.column is not None
    assert fragment in found.message


def test_exports_and_imports() -> None:
    session = parse(
        "secrets:\n"
        "  - name: shared\n    kind: ascii\n"
        f"    export:\n      - session: other\n        session_hash: {H1.upper()}\n"
        "      - namespace: team\n"
        "  - name: theirs\n"
        f"    import: {{session: exporter, secret: token, session_hash: {H2}}}\n"
        "  - name: typed\n    kind: binary\n    import: {session: exporter, secret: other}\n"
    )

    shared, theirs, typed = session.secrets
    assert shared.export == (
        ExportRule(session="other", session_hash=H1),
        ExportRule(namespace="team"),
    )
    assert theirs.import_ == ImportSpec(session="exporter", secret="token", session_hash=H2)
    assert theirs.kind is None
    assert theirs.size is None
    assert typed.kind == "binary"
    assert typed.size is None


def test_a_single_export_mapping_is_a_list_of_one() -> None:
    session = parse("secrets:\n  - {name: a, kind: ascii, export: {namespace: team}}\n")

    assert session.secrets[0].export == (ExportRule(namespace="team"),)


def test_images_and_injection_files() -> None:
    session = parse(
        "images:\n  - name: img\n    injection_files:\n"
        "      - path: /z/last\n"
        "      - path: /etc/app.conf\n        content: |\n          key = $$SCONE::k$$\n"
        "        permission: '600'\n"
        "      - {path: /a, permission: '0o644'}\n"
        "secrets:\n  - {name: k, kind: ascii}\n"
    )

    files = session.images[0].injection_files
    assert [f.path for f in files] == ["/a", "/etc/app.conf", "/z/last"]
    assert files[1].content == "key = $$CAS::k$$\n"
    assert [f.permission for f in files] == ["0644", "0600", None]


@pytest.mark.parametrize(
    ("entry", "path", "fragment"),
    [
        ("{path: relative}", "images[0].injection_files[0].path", "absolute path"),
        ("{path: /a/../b}", "images[0].injection_files[0].path", "'..' segments"),
        (
            "{path: /a, permission: 0600}",
            "images[0].injection_files[0].permission",
            "in quotes, as '0600'",
        ),
        ("{path: /a, permission: '4755'}", "images[0].injection_files[0].permission", "no setuid"),
        ("{content: x}", "images[0].injection_files[0].path", "required key is missing"),
    ],
)
def test_injection_file_errors(entry: str, path: str, fragment: str) -> None:
    found = problem(HEAD + f"images:\n  - name: img\n    injection_files:\n      - {entry}\n")

    assert found.key == path
    assert found.line == 6
    assert fragment in found.message


def test_injection_paths_are_unique_per_image() -> None:
    found = problem(
        HEAD + "images:\n  - name: img\n    injection_files:\n      - path: /a\n      - path: /a\n"
    )

    assert found == Problem(
        "t.yaml",
        7,
        15,
        "the path is already used by images[0].injection_files[0]",
        "images[0].injection_files[1].path",
    )


# --- access policy ---------------------------------------------------------------------------


def test_access_rules_from_keywords_certificates_and_key_hashes() -> None:
    public_pem = (
        load_certificate_pem(pem("signer-2").encode())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    session = parse(
        "access_policy:\n"
        "  read:\n"
        "    - creator\n"
        f"    - |\n{indented(pem('reader'), 6)}\n"
        f"    - {H1.upper()}\n"
        "  update:\n"
        f"    - signer: |\n{indented(pem('signer-1'), 8)}\n"
        f"    - signer: |\n{indented(public_pem, 8)}\n"
        f"    - signer: {H2}\n"
    )

    policy = session.access_policy
    assert policy.read == AtLeastRule(
        count=1, rules=(CreatorRule(), KeyRule(key_hash=cert_hash("reader")), KeyRule(key_hash=H1))
    )
    assert policy.update == AtLeastRule(
        count=1,
        rules=(
            SignerRule(key_hash=cert_hash("signer-1")),
            SignerRule(key_hash=cert_hash("signer-2")),
            SignerRule(key_hash=H2),
        ),
    )
    assert policy.create_sessions == policy.update


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("[ANY]", AnyRule()),
        ("NONE", NoneRule()),
        ("[CREATOR]", CreatorRule()),
        (f"{{require-all: [CREATOR, {H1}]}}", AllRule(rules=(CreatorRule(), KeyRule(key_hash=H1)))),
        (f"{{require-all: [{H1}]}}", KeyRule(key_hash=H1)),
        (
            f"{{require-at-least-2: [CREATOR, {H1}, {H2}]}}",
            AtLeastRule(count=2, rules=(CreatorRule(), KeyRule(key_hash=H1), KeyRule(key_hash=H2))),
        ),
        (
            f"{{require-at-least-2: [CREATOR, {H1}]}}",
            AllRule(rules=(CreatorRule(), KeyRule(key_hash=H1))),
        ),
        (
            f"[CREATOR, {{require-all: [{H1}, {{signer: {H2}}}]}}]",
            AtLeastRule(
                count=1,
                rules=(
                    CreatorRule(),
                    AllRule(rules=(KeyRule(key_hash=H1), SignerRule(key_hash=H2))),
                ),
            ),
        ),
    ],
)
def test_update_rule_forms(rule: str, expected: object) -> None:
    assert parse(f"access_policy:\n  update: {rule}\n").access_policy.update == expected


@pytest.mark.parametrize(
    ("rule", "path", "fragment"),
    [
        ("[CREATOR, ANY]", "access_policy.update", "must stand alone"),
        ("[NONE, NONE]", "access_policy.update", "must stand alone"),
        (f"[{H1}, {H1.upper()}]", "access_policy.update[1]", "listed twice"),
        ("[]", "access_policy.update", "at least one rule"),
        ("[[CREATOR]]", "access_policy.update[0]", "a list inside a list"),
        ("[someone]", "access_policy.update[0]", "expected CREATOR, ANY, NONE"),
        ("[{signer: nope}]", "access_policy.update[0].signer", "expected CREATOR, ANY, NONE"),
        ("{require-some: [CREATOR]}", "access_policy.update.require-some", "unknown key"),
        (
            "{require-at-least-3: [CREATOR, ANY]}",
            "access_policy.update.require-at-least-3",
            "could never be met",
        ),
        ("{require-all: []}", "access_policy.update.require-all", "non-empty list"),
        ("{require-all: [CREATOR], signer: x}", "access_policy.update", "exactly one key"),
        ("[5]", "access_policy.update[0]", "got integer 5"),
        (
            json.dumps(["-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----"]),
            "access_policy.update[0]",
            "not a usable certificate",
        ),
    ],
)
def test_access_rule_errors(rule: str, path: str, fragment: str) -> None:
    found = problem(HEAD + f"access_policy:\n  update: {rule}\n")

    assert found.key == path
    assert found.line == 4
    assert fragment in found.message


def test_read_takes_no_trees_or_signers() -> None:
    for rule in (f"[{{signer: {H1}}}]", f"{{require-all: [CREATOR, {H1}]}}"):
        found = problem(HEAD + f"access_policy:\n  read: {rule}\n")
        assert found.key.startswith("access_policy.read")
        assert "read takes a plain list" in found.message


# --- security --------------------------------------------------------------------------------


def test_security_tolerate_and_advisories_are_sorted_and_unique() -> None:
    session = parse(
        "security:\n  attestation:\n    mode: none\n"
        "    tolerate: [simulated, debug-mode, simulated]\n"
        "    ignore_advisories: [intel-sa-00615, INTEL-SA-00334, INTEL-SA-00615]\n"
    )

    attestation = session.security.attestation
    assert attestation.mode == "none"
    assert attestation.tolerate == ("debug-mode", "simulated")
    assert attestation.ignore_advisories == ("INTEL-SA-00334", "INTEL-SA-00615")
    assert parse(
        "security:\n  attestation:\n    ignore_advisories: '*'\n"
    ).security.attestation.ignore_advisories == ("*",)


@pytest.mark.parametrize(
    ("body", "path", "fragment"),
    [
        (
            "security:\n  attestation:\n    tolerate: [everything]\n",
            "security.attestation.tolerate[0]",
            "cannot be tolerated",
        ),
        (
            "security:\n  attestation:\n    mode: software\n",
            "security.attestation.mode",
            "expected one of: hardware, none",
        ),
        (
            "security:\n  attestation:\n    ignore_advisories: [SA-1]\n",
            "security.attestation.ignore_advisories[0]",
            "INTEL-SA-00334",
        ),
        ("security:\n  tcb: x\n", "security.tcb", "unknown key; expected one of: attestation"),
    ],
)
def test_security_errors(body: str, path: str, fragment: str) -> None:
    found = problem(HEAD + body)

    assert found.key == path
    assert fragment in found.message


# --- unsupported SCONE features ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "path", "line", "column", "feature"),
    [
        (
            "secrets:\n  - name: t\n    kind: aad-token\n",
            "secrets[0].kind",
            5,
            11,
            "kind 'aad-token'",
        ),
        (
            "secrets:\n  - name: t\n    kind: otp\n",
            "secrets[0].kind",
            5,
            11,
            "kind 'otp' (one-time passwords)",
        ),
        (
            "secrets:\n  - name: t\n    kind: ascii\n    otp: {}\n",
            "secrets[0].otp",
            6,
            5,
            "'otp' (one-time passwords)",
        ),
        (
            "secrets:\n  - name: t\n    kind: ascii\n    import_akv: {}\n",
            "secrets[0].import_akv",
            6,
            5,
            "'import_akv'",
        ),
        (
            "security:\n  attestation:\n    mode: maa\n",
            "security.attestation.mode",
            5,
            11,
            "mode 'maa'",
        ),
    ],
)
def test_unsupported_features_are_named(
    body: str, path: str, line: int, column: int, feature: str
) -> None:
    found = problem(HEAD + body)

    assert (found.key, found.line, found.column) == (path, line, column)
    assert feature in found.message
    assert "OpenCAS does not support" in found.message


@pytest.mark.parametrize(
    ("body", "path", "expected"),
    [
        ("colour: red\n", "colour", "name, version, predecessor, services, secrets, images"),
        ("services:\n  - name: a\n    cmd: x\n", "services[0].cmd", "name, command, environment"),
        (
            "secrets:\n  - name: a\n    kind: ascii\n    length: 3\n",
            "secrets[0].length",
            "name, kind, size",
        ),
        ("images:\n  - name: a\n    files: []\n", "images[0].files", "name, injection_files"),
        (
            "access_policy:\n  write: [ANY]\n",
            "access_policy.write",
            "read, update, create_sessions",
        ),
    ],
)
def test_unknown_keys_list_the_expected_ones(body: str, path: str, expected: str) -> None:
    found = problem(HEAD + body)

    assert found.key == path
    assert found.message.startswith("unknown key; expected one of: ")
    assert expected in found.message


# --- placeholders and cross references -------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("$$CAS::missing$$", "names no secret of this session"),
        ("$$CAS::cert:hex$$", "the format 'hex' does not fit an x509 secret"),
        ("$$CAS::text:crt$$", "the format 'crt' does not fit an ascii secret"),
        ("$$CAS::text.key$$", "applies only to x509 and x509-ca secrets"),
        ("$$CAS::cert.key:crt$$", "does not fit the .key part"),
        ("$$CAS::cert", "no closing '$$'"),
        ("$$SCONE::cert:jpeg$$", "unknown format 'jpeg'"),
    ],
)
def test_placeholders_are_validated_at_parse_time(value: str, fragment: str) -> None:
    found = problem(
        HEAD + f"services:\n  - name: a\n    environment:\n      X: '{value}'\n"
        "secrets:\n  - {name: cert, kind: x509}\n  - {name: text, kind: ascii}\n"
    )

    assert (found.key, found.line, found.column) == ("services[0].environment.X", 6, 10)
    assert fragment in found.message


def test_placeholders_of_imported_secrets_of_unknown_kind_accept_any_kind_format() -> None:
    session = parse(
        "services:\n  - name: a\n    command: ['$$CAS::imp:hex$$', '$$CAS::imp.chain$$']\n"
        "secrets:\n  - {name: imp, import: {session: other, secret: x}}\n"
    )

    assert session.services[0].command == ("$$CAS::imp:hex$$", "$$CAS::imp.chain$$")


def test_imported_secrets_with_a_kind_are_checked_against_it() -> None:
    found = problem(
        HEAD + "services:\n  - name: a\n    command: ['$$CAS::imp:hex$$']\n"
        "secrets:\n  - {name: imp, kind: x509, import: {session: other, secret: x}}\n"
    )

    assert "does not fit an x509 secret" in found.message


def test_placeholder_problems_in_multi_line_content_name_the_line_of_the_text() -> None:
    found = problem(
        HEAD + "images:\n  - name: i\n    injection_files:\n      - path: /a\n"
        "        content: |\n          first\n          $$CAS::nope$$\n"
    )

    assert found.key == "images[0].injection_files[0].content"
    assert "(line 2 of the text)" in found.message


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (
            "images:\n  - name: i\n    injection_files:\n      - path: /$$CAS::k$$\n",
            "images[0].injection_files[0].path",
        ),
        ("secrets:\n  - {name: k, kind: ascii, value: '$$CAS::k$$'}\n", "secrets[0].value"),
        (
            "services:\n  - name: a\n    environment:\n      $$CAS::k$$: x\n",
            "services[0].environment.$$CAS::k$$",
        ),
    ],
)
def test_placeholders_where_they_are_not_replaced_are_refused(body: str, path: str) -> None:
    found = problems(HEAD + body)

    assert path in [item.key for item in found]


@pytest.mark.parametrize(
    ("body", "path", "fragment"),
    [
        (
            "services:\n  - name: a\n    image_name: nope\n",
            "services[0].image_name",
            "no image called 'nope'",
        ),
        (
            "secrets:\n  - {name: c, kind: x509, private_key: t}\n  - {name: t, kind: ascii}\n",
            "secrets[0].private_key",
            "no private-key secret called 't'",
        ),
        (
            "secrets:\n  - {name: c, kind: x509, issuer: ca}\n",
            "secrets[0].issuer",
            "no x509-ca secret called 'ca'",
        ),
        (
            "secrets:\n  - {name: c, kind: x509, issuer: o}\n  - {name: o, kind: x509}\n",
            "secrets[0].issuer",
            "no x509-ca secret called 'o'",
        ),
        (
            "secrets:\n  - {name: c, kind: x509, private_key: k}\n"
            "  - {name: k, import: {session: o, secret: k}}\n",
            "secrets[0].private_key",
            "no private-key secret",
        ),
        (
            "services:\n  - name: a\n  - name: a\n",
            "services[1].name",
            "already used by services[0]",
        ),
        (
            "secrets:\n  - {name: a, kind: ascii}\n  - {name: a, kind: binary}\n",
            "secrets[1].name",
            "already used by secrets[0]",
        ),
        ("images:\n  - name: a\n  - name: a\n", "images[1].name", "already used by images[0]"),
    ],
)
def test_cross_references(body: str, path: str, fragment: str) -> None:
    found = problem(HEAD + body)

    assert found.key == path
    assert found.line is not None
    assert fragment in found.message


def test_issuer_cycles_are_refused() -> None:
    found = problems(
        HEAD + "secrets:\n  - {name: a, kind: x509-ca, issuer: b}\n"
        "  - {name: b, kind: x509-ca, issuer: a}\n"
        "  - {name: c, kind: x509, issuer: a}\n"
    )

    assert [(item.key, item.line) for item in found] == [
        ("secrets[0].issuer", 4),
        ("secrets[1].issuer", 5),
    ]
    assert all("cycle" in item.message for item in found)


# --- explicit certificate values -------------------------------------------------------------


def explicit(cert: str, key: str) -> str:
    return (
        "secrets:\n"
        f"  - name: k\n    kind: private-key\n    value: |\n{indented(key, 6)}\n"
        f"  - name: c\n    kind: x509\n    private_key: k\n    value: |\n{indented(cert, 6)}\n"
    )


def test_a_given_certificate_and_its_key() -> None:
    key = (KEYS / "signer-1.key.pem").read_text()

    session = parse(explicit(pem("signer-1"), key))

    cert = session.secret("c")
    assert cert is not None
    assert cert.value is not None
    assert cert.value.startswith("-----BEGIN CERTIFICATE-----")
    assert cert.key_type is None


def test_a_given_certificate_must_certify_its_key() -> None:
    key = (KEYS / "signer-1.key.pem").read_text()

    found = problem(HEAD + explicit(pem("signer-2"), key))

    assert found.key == "secrets[1].value"
    assert "does not certify the key 'k'" in found.message


def test_a_given_certificate_needs_a_given_key() -> None:
    found = problem(
        HEAD + "secrets:\n  - {name: k, kind: private-key}\n"
        "  - name: c\n    kind: x509\n    private_key: k\n"
        f"    value: |\n{indented(pem('reader'), 6)}\n"
    )

    assert found.key == "secrets[1].private_key"


def test_a_given_private_key_must_load() -> None:
    bad = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"

    found = problem(
        HEAD + f"secrets:\n  - name: k\n    kind: private-key\n    value: |\n{indented(bad, 6)}\n"
    )

    assert found.key == "secrets[0].value"
    assert "not a usable private key" in found.message


# --- structure and predecessor -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "got"),
    [
        ("- a\n", "got a sequence"),
        ("just text\n", "got a string"),
        ("", "got an empty document"),
        ("3\n", "got integer 3"),
    ],
)
def test_the_root_must_be_a_mapping(text: str, got: str) -> None:
    found = problem(text)

    assert (found.key, found.line, found.column) == ("", 1, 1)
    assert found.message.endswith(got)


def test_missing_required_keys_point_at_the_enclosing_mapping() -> None:
    found = problems("services:\n  - command: x\n")

    assert [(item.key, item.line, item.column) for item in found] == [
        ("name", 1, 1),
        ("version", 1, 1),
        ("services[0].name", 2, 5),
    ]


def test_null_means_absent() -> None:
    assert parse("services:\nsecrets: ~\naccess_policy:\npredecessor:\n") == parse("")


@pytest.mark.parametrize(
    ("purpose", "with_predecessor", "error"),
    [
        ("create", False, None),
        ("create", True, "a new session has no predecessor"),
        ("update", True, None),
        ("update", False, "an update names the hash of the session version it replaces"),
        ("check", True, None),
        ("check", False, None),
    ],
)
def test_predecessor_by_purpose(
    purpose: Purpose, with_predecessor: bool, error: str | None
) -> None:
    text = HEAD + (f"predecessor: {H1.upper()}\n" if with_predecessor else "")
    if error is None:
        session = parse_session(text, purpose=purpose)
        assert session.predecessor == (H1 if with_predecessor else None)
    else:
        found = problem(text, purpose=purpose)
        assert found.key == "predecessor"
        assert error in found.message


def test_predecessor_must_be_a_session_hash() -> None:
    found = problem(HEAD + "predecessor: abc\n")

    assert found == Problem(
        "t.yaml", 3, 14, "expected 64 lowercase hexadecimal digits, got 'abc'", "predecessor"
    )


@pytest.mark.parametrize(
    ("text", "path", "line", "column"),
    [
        ("name: a\nname: b\nversion: '0.3'\n", "name", 2, 1),
        ("name: &n a\nversion: '0.3'\n", "name", 1, 7),
        ("name: a\nversion: '0.3'\n---\nname: b\n", "", 3, 1),
        ("name: a\nversion: [\n", "", 3, 1),
        ("name: !!binary YQ==\nversion: '0.3'\n", "name", 1, 7),
        ("1: a\nname: a\nversion: '0.3'\n", "", 1, 1),
    ],
)
def test_yaml_level_errors_carry_path_line_and_column(
    text: str, path: str, line: int, column: int
) -> None:
    found = problem(text)

    assert (found.key, found.line, found.column) == (path, line, column)


def test_an_oversized_text_is_refused_before_parsing() -> None:
    found = problem(HEAD + "x: '" + "a" * (1 << 20) + "'\n")

    assert (found.line, found.column) == (1, 1)
    assert "larger than" in found.message


def test_every_problem_is_reported_in_text_order() -> None:
    found = problems(
        "name: s\nversion: '0.3'\ncolour: red\nservices:\n  - name: a\n    environment: {A: []}\n"
        "secrets:\n  - {name: b, kind: nope}\n"
    )

    assert [item.line for item in found] == [3, 6, 8]


def test_session_error_text_names_source_line_column_and_path() -> None:
    with pytest.raises(SessionError) as caught:
        parse_session(HEAD + "colour: red\n", "my-session.yaml")

    error = caught.value
    assert error.code == "invalid-session"
    assert error.http_status == 400
    assert str(error) == (
        "my-session.yaml:3:1: colour: unknown key; expected one of: name, version, predecessor, "
        "services, secrets, images, volumes, access_policy, security"
    )
    assert error.to_json()["problems"] == [
        {
            "path": "my-session.yaml",
            "key": "colour",
            "line": 3,
            "column": 1,
            "message": error.problems[0].message,
        }
    ]


def test_a_byte_order_mark_is_ignored() -> None:
    assert parse_session("\ufeff" + HEAD) == parse("")


# --- spellings and the normal form -------------------------------------------------------------


SCONE_SPELLING = f"""
name: same
version: 0.3.2
services:
  - name: web
    mrenclaves: [{H1.upper()}]
    command: run --key "$$SCONE::cert.key$$"
    environment: {{PASS: $$SCONE::pass$$}}
secrets:
  - name: pass
    kind: ascii
  - name: cert
    kind: x509
    dns: [Web.Example]
security:
  attestation:
    tolerate: [simulated, debug-mode]
access_policy:
  read: creator
"""
CAS_SPELLING = f"""
access_policy:
  update: [CREATOR]
  read: [CREATOR]
  create_sessions: [CREATOR]
secrets:
  - kind: x509
    name: cert
    san: ['dns:web.example']
    key_type: P-256
  - name: pass
    size: 20
    kind: ascii
version: "0.3"
name: same
security:
  attestation: {{mode: hardware, tolerate: [debug-mode, simulated], ignore_advisories: []}}
services:
  - name: web
    environment:
      PASS: $$CAS::pass$$
    command: [run, --key, $$CAS::cert.key$$]
    attestation: [{{mrenclave: [{H1}]}}]
    platforms: []
"""


def test_equal_sessions_in_different_spellings_hash_equal() -> None:
    scone = parse_session(SCONE_SPELLING)
    cas = parse_session(CAS_SPELLING)

    assert scone == cas
    assert scone.normal_form() == cas.normal_form()
    assert session_hash(scone) == session_hash(cas)


def test_any_change_of_meaning_changes_the_hash() -> None:
    base = session_hash(parse_session(CAS_SPELLING))
    changed = [
        CAS_SPELLING.replace("size: 20", "size: 21"),
        CAS_SPELLING.replace("name: same", "name: other"),
        CAS_SPELLING.replace("--key", "--cert"),
        CAS_SPELLING.replace("[debug-mode, simulated]", "[debug-mode]"),
        CAS_SPELLING.replace("  read: [CREATOR]", "  read: [ANY]"),
        CAS_SPELLING + f"predecessor: {H2}\n",
    ]

    hashes = {session_hash(parse_session(text)) for text in changed}

    assert base not in hashes
    assert len(hashes) == len(changed)


def test_session_hash_is_sha256_of_canonical_normal_form() -> None:
    session = parse_session(CAS_SPELLING)

    assert (
        session_hash(session) == hashlib.sha256(canonical_json(session.normal_form())).hexdigest()
    )


def normal() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(parse_session(SCONE_SPELLING).normal_form()))
    return data


def test_normal_form_round_trips() -> None:
    session = parse_session(SCONE_SPELLING)

    assert session_from_normal_form(normal()) == session


@pytest.mark.parametrize(
    "mutate",
    [
        lambda n: n.pop("security"),
        lambda n: n.update(extra=1),
        lambda n: n["secrets"].reverse(),
        lambda n: n["secrets"][0].update(size="20"),
        lambda n: n["secrets"][0].update(import_=None),
        lambda n: n["secrets"][0].pop("import"),
        lambda n: n["security"]["attestation"]["tolerate"].reverse(),
        lambda n: n["services"][0]["attestation"][0].update(mrenclave=[H1.upper()]),
        lambda n: n.update(version="0.3.1"),
        lambda n: n["access_policy"].update(read={"type": "owner"}),
        lambda n: n.update(name=float("nan")),
    ],
)
def test_session_from_normal_form_is_strict(mutate: Any) -> None:
    data = normal()
    mutate(data)

    with pytest.raises(SessionError) as caught:
        session_from_normal_form(data)

    assert caught.value.source == "stored session"


@pytest.mark.parametrize("value", [None, [], "text", 3])
def test_session_from_normal_form_needs_an_object(value: object) -> None:
    with pytest.raises(SessionError, match="JSON object"):
        session_from_normal_form(value, source="record x")


def test_session_from_normal_form_names_where_the_spelling_differs() -> None:
    data = normal()
    data["security"]["attestation"]["tolerate"].reverse()

    with pytest.raises(SessionError) as caught:
        session_from_normal_form(data)

    assert caught.value.problems[0].key == "security.attestation.tolerate[0]"
