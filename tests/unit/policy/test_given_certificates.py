"""Certificates given as ``value`` as SCONE takes them: without ``private_key`` (a certificate
only, such as a trust anchor) and with an ``issuer`` that signed them."""

from __future__ import annotations

import datetime
import textwrap

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from opencas.crypto.keys import key_hash
from opencas.policy.errors import SessionError
from opencas.policy.model import KeyRule, SecretKeyRule, SignerRule
from opencas.policy.parse import parse_session, session_from_normal_form
from opencas.policy.secret_values import SecretValue, generate_values, render_value

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def certificate(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    signer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    ca: bool,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, signing_key = (signer[0].subject, signer[1]) if signer else (subject, key)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(signing_key, hashes.SHA256())
    )


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


CA_KEY = ec.generate_private_key(ec.SECP256R1())
CA = certificate("Given CA", CA_KEY, None, True)
LEAF_KEY = ec.generate_private_key(ec.SECP256R1())
LEAF = certificate("leaf.example", LEAF_KEY, (CA, CA_KEY), False)
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_CA = certificate("Other CA", OTHER_KEY, None, True)


def block(text: str) -> str:
    return "|\n" + textwrap.indent(text, "      ")


def session(secrets: str, command: str = "$$CAS::anchor$$") -> str:
    return (
        'name: s\nversion: "0.3"\nservices:\n  - name: app\n'
        f'    command: ["app", "{command}"]\nsecrets:\n{secrets}'
    )


ANCHOR = f"  - name: anchor\n    kind: x509-ca\n    value: {block(pem(CA))}"


def problems(text: str) -> list[str]:
    with pytest.raises(SessionError) as caught:
        parse_session(text, "t.yaml")
    return [f"{item.key}: {item.message}" for item in caught.value.problems]


def test_a_certificate_without_its_key_is_a_certificate_only() -> None:
    parsed = parse_session(session(ANCHOR))

    values = generate_values(parsed, now=NOW)

    anchor = values["anchor"]
    assert anchor.private_key_pem is None
    assert render_value(anchor, None, None) == pem(CA)
    assert render_value(anchor, "chain", None) == pem(CA)
    assert SecretValue.from_record(anchor.to_record()) == anchor


@pytest.mark.parametrize("reference", ["$$CAS::anchor.key$$", "$$CAS::anchor:privatekey$$"])
def test_its_private_key_cannot_be_asked_for(reference: str) -> None:
    found = problems(session(ANCHOR, reference))

    assert found == [
        "services[0].command[1]: 'anchor' is a certificate given without its private_key: it "
        "has no key to give"
    ]


def test_a_given_certificate_with_its_issuer_gets_the_issuers_chain() -> None:
    leaf = f"  - name: leaf\n    kind: x509\n    issuer: anchor\n    value: {block(pem(LEAF))}"
    parsed = parse_session(session(ANCHOR + leaf, "$$CAS::leaf.chain$$"))

    values = generate_values(parsed, now=NOW)

    assert values["leaf"].certificate_pem == pem(LEAF)
    assert values["leaf"].chain_pem == pem(LEAF) + pem(CA)


def test_a_given_certificate_not_signed_by_its_issuer_is_refused() -> None:
    other = f"  - name: other\n    kind: x509-ca\n    value: {block(pem(OTHER_CA))}"
    leaf = f"  - name: leaf\n    kind: x509\n    issuer: other\n    value: {block(pem(LEAF))}"

    assert problems(session(ANCHOR + other + leaf)) == [
        "secrets[2].value: the certificate is not signed by the issuer 'other'"
    ]


def test_a_given_certificate_cannot_name_a_generated_issuer() -> None:
    generated = "  - name: made\n    kind: x509-ca\n"
    leaf = f"  - name: leaf\n    kind: x509\n    issuer: made\n    value: {block(pem(LEAF))}"

    found = problems(session(ANCHOR + generated + leaf))

    assert len(found) == 1
    assert found[0].startswith("secrets[2].issuer: a certificate given as 'value' names an issuer")
    assert "'made' is generated here and cannot have signed it" in found[0]


def test_a_generated_certificate_cannot_be_issued_by_a_certificate_only() -> None:
    generated = "  - name: server\n    kind: x509\n    issuer: anchor\n"

    assert problems(session(ANCHOR + generated)) == [
        "secrets[1].issuer: the issuer 'anchor' is a certificate given without its private_key: "
        "it cannot sign"
    ]


def test_a_given_x509_ca_must_still_be_a_ca() -> None:
    text = session(f"  - name: anchor\n    kind: x509-ca\n    value: {block(pem(LEAF))}")

    with pytest.raises(SessionError, match="must be a CA certificate"):
        generate_values(parse_session(text), now=NOW)


# --- a certificate secret as an identity in an access policy ----------------------------------


def test_a_given_certificate_secret_names_its_key_in_an_access_policy() -> None:
    text = session(ANCHOR) + (
        "access_policy:\n  read: [CREATOR, $$CAS::anchor$$]\n"
        "  update:\n    - signer: $$SCONE::anchor.crt$$\n"
    )

    policy = parse_session(text).access_policy

    assert KeyRule(key_hash=key_hash(CA_KEY.public_key())) in policy.read.rules  # type: ignore[union-attr]
    assert policy.update == SignerRule(key_hash=key_hash(CA_KEY.public_key()))


@pytest.mark.parametrize(
    ("reference", "fragment"),
    [
        ("$$CAS::nothing$$", "'nothing' names no secret"),
        ("$$CAS::theirs$$", "'theirs' is imported"),
        ("$$CAS::token$$", "'token' is not a certificate secret"),
        ("$$CAS::anchor.key$$", "an identity names a certificate secret as $$CAS::NAME$$, alone"),
        ("x $$CAS::anchor$$", "an identity names a certificate secret as $$CAS::NAME$$, alone"),
    ],
)
def test_a_secret_that_is_no_known_key_is_refused_as_an_identity(
    reference: str, fragment: str
) -> None:
    secrets = ANCHOR + "  - name: made\n    kind: x509-ca\n  - name: token\n    kind: ascii\n"
    secrets += "  - name: theirs\n    import: {session: other, secret: cert}\n"
    text = session(secrets) + f'access_policy:\n  read: ["{reference}"]\n'

    found = problems(text)

    assert len(found) == 1
    assert found[0].startswith("access_policy.read[0]: ")
    assert fragment in found[0]


def test_a_generated_certificate_secret_is_an_identity_decided_when_it_exists() -> None:
    secrets = "  - name: made\n    kind: x509-ca\n"
    text = session(secrets, "$$CAS::made$$") + (
        "access_policy:\n  read: [CREATOR, '$$CAS::made$$']\n"
        "  update: {require-all: ['$$SCONE::made:pem$$', CREATOR]}\n"
    )

    parsed = parse_session(text)

    assert SecretKeyRule(secret="made") in parsed.access_policy.read.rules  # type: ignore[union-attr]
    assert SecretKeyRule(secret="made") in parsed.access_policy.update.rules  # type: ignore[union-attr]
    form = parsed.normal_form()
    assert {"type": "secret-key", "secret": "made"} in form["access_policy"]["read"]["rules"]
    assert session_from_normal_form(form) == parsed


def test_a_signer_cannot_name_a_generated_certificate() -> None:
    text = session("  - name: made\n    kind: x509-ca\n", "$$CAS::made$$") + (
        "access_policy:\n  update:\n    - signer: $$CAS::made$$\n"
    )

    (found,) = problems(text)

    assert found.startswith("access_policy.update[0].signer: 'made' is a certificate this CAS")
    assert "a signer names a key fixed in the text" in found
