"""Secret values: generation per kind, carry-over on update, explicit values, rendering, records,
import decisions and public values."""

from __future__ import annotations

import base64
import ipaddress
import json
import string
import textwrap
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from opencas.crypto.keys import key_hash, key_type_of
from opencas.crypto.pem import load_certificate_chain_pem
from opencas.crypto.x509 import CLOCK_SKEW, Issuer, certificate_key_hash, verify_issued_by
from opencas.policy.certificates import issue_certificate
from opencas.policy.errors import SessionError
from opencas.policy.model import Session
from opencas.policy.parse import parse_session
from opencas.policy.placeholders import Placeholder, render
from opencas.policy.secret_values import (
    ASCII_ALPHABET,
    SecretValue,
    check_import,
    generate_values,
    public_values,
    render_value,
)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
HASH_A = "a1" * 32
HASH_B = "b2" * 32


def _session(*secrets: dict[str, Any], name: str = "org/app") -> Session:
    return Session.model_validate_json(json.dumps({"name": name, "secrets": list(secrets)}))


def _generate(session: Session, **kwargs: Any) -> dict[str, SecretValue]:
    return generate_values(session, now=NOW, **kwargs)


def _update(
    before: Session, values: dict[str, SecretValue], after: Session, **kwargs: Any
) -> dict[str, SecretValue]:
    return generate_values(after, values, before, now=NOW, **kwargs)


def _ext(cert: x509.Certificate, kind: type[Any]) -> Any:
    return cert.extensions.get_extension_for_class(kind)


def _cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _pem(key: Any, fmt: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8) -> str:
    return str(
        key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()
    )


ASCII = {"name": "password", "kind": "ascii", "size": 20}
BINARY = {"name": "blob", "kind": "binary", "size": 32}


# --- generation per kind --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 20, 4096])
def test_ascii_is_random_letters_and_digits_of_size(size: int) -> None:
    values = _generate(_session({**ASCII, "size": size}))
    data = values["password"].data
    assert data is not None
    assert len(data) == size
    assert set(data.decode("ascii")) <= set(ASCII_ALPHABET)
    assert set(ASCII_ALPHABET) == set(string.ascii_letters + string.digits)


def test_ascii_and_binary_are_random() -> None:
    session = _session({**ASCII, "size": 32}, BINARY)
    first, second = _generate(session), _generate(session)
    assert first["password"] != second["password"]
    assert first["blob"] != second["blob"]
    # Over many characters every class of the alphabet shows up.
    text = (_generate(_session({**ASCII, "size": 4096}))["password"].data or b"").decode()
    assert any(c.isupper() for c in text)
    assert any(c.islower() for c in text)
    assert any(c.isdigit() for c in text)


@pytest.mark.parametrize("size", [1, 32, 4096])
def test_binary_has_size_bytes(size: int) -> None:
    value = _generate(_session({**BINARY, "size": size}))["blob"]
    assert value.kind == "binary"
    assert value.data is not None
    assert len(value.data) == size


@pytest.mark.parametrize("key_type", ["P-256", "P-384", "Ed25519", "RSA-2048", "RSA-3072"])
def test_private_key_of_each_type(key_type: str) -> None:
    values = _generate(_session({"name": "k", "kind": "private-key", "key_type": key_type}))
    value = values["k"]
    assert value.kind == "private-key"
    assert value.private_key_pem is not None
    assert value.private_key_pem.startswith("-----BEGIN PRIVATE KEY-----")
    assert key_type_of(value.private_key()) == key_type


CA = {"name": "ca", "kind": "x509-ca", "key_type": "P-384"}
SERVER = {
    "name": "server",
    "kind": "x509",
    "key_type": "P-256",
    "issuer": "ca",
    "endpoint": "server",
    "san": ["dns:api.example.com", "ip:10.0.0.1", "ip:2001:db8::1"],
}


def test_self_signed_ca() -> None:
    value = _generate(_session(CA))["ca"]
    cert = value.certificate()
    assert cert.subject == cert.issuer
    assert _cn(cert) == "ca"
    verify_issued_by(cert, cert)
    constraints = _ext(cert, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    usage = _ext(cert, x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA384)
    assert cert.not_valid_before_utc == NOW - CLOCK_SKEW
    assert cert.not_valid_after_utc == NOW + timedelta(days=3650)
    assert value.chain_pem == value.certificate_pem
    assert key_hash(value.private_key()) == certificate_key_hash(cert)


def test_server_certificate_issued_by_the_session_ca() -> None:
    values = _generate(_session(CA, SERVER))
    ca, server = values["ca"].certificate(), values["server"].certificate()
    verify_issued_by(server, ca)
    assert server.issuer == ca.subject
    assert _cn(server) == "server"
    assert not _ext(server, x509.BasicConstraints).value.ca
    assert _ext(server, x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH]
    )
    names = _ext(server, x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["api.example.com"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.1"),
        ipaddress.ip_address("2001:db8::1"),
    ]
    aki = _ext(server, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == _ext(ca, x509.SubjectKeyIdentifier).value.digest
    assert server.not_valid_after_utc == NOW + timedelta(days=365)
    chain = load_certificate_chain_pem((values["server"].chain_pem or "").encode())
    assert chain == [server, ca]
    # A TLS client that trusts the session CA accepts the chain for the SAN's host name.
    verifier = (
        PolicyBuilder()
        .store(Store([ca]))
        .time(NOW)
        .build_server_verifier(x509.DNSName("api.example.com"))
    )
    verifier.verify(server, [])


def test_client_certificate_verifies_as_a_client() -> None:
    client = {"name": "client", "kind": "x509", "key_type": "Ed25519", "issuer": "ca"}
    values = _generate(_session(CA, {**client, "endpoint": "client", "san": ["dns:worker"]}))
    cert, ca = values["client"].certificate(), values["ca"].certificate()
    assert _ext(cert, x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    assert isinstance(cert.public_key(), ed25519.Ed25519PublicKey)
    verifier = PolicyBuilder().store(Store([ca])).time(NOW).build_client_verifier()
    verifier.verify(cert, [])


def test_no_endpoint_means_no_extended_key_usage() -> None:
    values = _generate(_session(CA, {"name": "plain", "kind": "x509", "key_type": "P-256"}))
    cert = values["plain"].certificate()
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_self_signed_end_entity() -> None:
    spec = {"name": "solo", "kind": "x509", "key_type": "P-256", "valid_for": "48h"}
    value = _generate(_session({**spec, "common_name": "Solo Service"}))["solo"]
    cert = value.certificate()
    assert cert.subject == cert.issuer
    verify_issued_by(cert, cert)
    assert _cn(cert) == "Solo Service"
    assert not _ext(cert, x509.BasicConstraints).value.ca
    assert cert.not_valid_after_utc == NOW + timedelta(hours=48)
    assert value.chain_pem == value.certificate_pem


def test_three_level_chain_issued_in_dependency_order() -> None:
    # Names sort leaf-first, so the issuers must be found, not taken in the session's order.
    session = _session(
        {
            "name": "a-leaf",
            "kind": "x509",
            "key_type": "P-256",
            "issuer": "m-intermediate",
            "endpoint": "client",
            "san": ["dns:worker.internal"],
        },
        {"name": "m-intermediate", "kind": "x509-ca", "key_type": "P-256", "issuer": "z-root"},
        {"name": "z-root", "kind": "x509-ca", "key_type": "RSA-2048", "valid_for": "30d"},
    )
    values = _generate(session)
    assert list(values) == ["a-leaf", "m-intermediate", "z-root"]
    leaf, middle, root = (values[n].certificate() for n in ("a-leaf", "m-intermediate", "z-root"))
    verify_issued_by(leaf, middle)
    verify_issued_by(middle, root)
    assert _ext(root, x509.BasicConstraints).value.path_length is None
    assert _ext(middle, x509.BasicConstraints).value.path_length == 0
    chain = load_certificate_chain_pem((values["a-leaf"].chain_pem or "").encode())
    assert chain == [leaf, middle, root]
    # Cut to the root's shorter validity.
    assert leaf.not_valid_after_utc == NOW + timedelta(days=30)
    assert isinstance(middle.signature_hash_algorithm, hashes.SHA256)
    PolicyBuilder().store(Store([root])).time(NOW).build_client_verifier().verify(leaf, [middle])


def test_certificate_for_a_named_private_key() -> None:
    session = _session(
        {"name": "key", "kind": "private-key", "key_type": "RSA-2048"},
        {"name": "cert", "kind": "x509", "private_key": "key", "issuer": "ca"},
        CA,
    )
    values = _generate(session)
    cert = values["cert"].certificate()
    assert certificate_key_hash(cert) == key_hash(values["key"].private_key())
    assert values["cert"].private_key_pem == values["key"].private_key_pem
    assert _ext(cert, x509.KeyUsage).value.key_encipherment


def test_expired_issuer_is_refused_on_the_certificate_that_needs_it() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    old = issue_certificate(
        key,
        common_name="old",
        is_ca=True,
        now=NOW - timedelta(days=30),
        valid_for=timedelta(days=1),
    )
    session = _session(
        {"name": "cakey", "kind": "private-key", "key_type": "P-256", "value": _pem(key)},
        {
            "name": "old-ca",
            "kind": "x509-ca",
            "private_key": "cakey",
            "value": old.public_bytes(serialization.Encoding.PEM).decode(),
        },
        {"name": "leaf", "kind": "x509", "key_type": "P-256", "issuer": "old-ca"},
    )
    with pytest.raises(SessionError) as error:
        _generate(session)
    assert [p.key for p in error.value.problems] == ["secrets[1].issuer"]
    assert "not valid now" in str(error.value)


def test_generated_values_follow_the_session_order_and_skip_nothing() -> None:
    session = _session(
        ASCII, BINARY, CA, SERVER, {"name": "k", "kind": "private-key", "key_type": "P-256"}
    )
    assert list(_generate(session)) == [spec.name for spec in session.secrets]


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        generate_values(_session(ASCII), now=datetime(2025, 1, 1))


# --- carry-over on update -------------------------------------------------------------------------


@pytest.mark.parametrize("base", [ASCII, BINARY], ids=["ascii", "binary"])
def test_data_kept_when_name_kind_and_size_match(base: dict[str, Any]) -> None:
    before = _session(base)
    values = _generate(before)
    after = _session(base, {"name": "extra", "kind": "ascii", "size": 5})
    assert _update(before, values, after)[base["name"]] == values[base["name"]]


@pytest.mark.parametrize("base", [ASCII, BINARY], ids=["ascii", "binary"])
def test_data_regenerated_when_size_changes(base: dict[str, Any]) -> None:
    before = _session(base)
    values = _generate(before)
    new = _update(before, values, _session({**base, "size": base["size"] + 1}))[base["name"]]
    assert new.data is not None
    assert len(new.data) == base["size"] + 1


def test_data_regenerated_when_kind_changes() -> None:
    before = _session({**BINARY, "name": "s", "size": 20})
    values = _generate(before)
    new = _update(before, values, _session({**ASCII, "name": "s"}))["s"]
    assert new.kind == "ascii"
    assert new.data != values["s"].data


def test_data_not_carried_to_another_name() -> None:
    before = _session(ASCII)
    values = _generate(before)
    new = _update(before, values, _session({**ASCII, "name": "renamed"}))
    assert new["renamed"].data != values["password"].data


def test_explicit_value_replaces_a_generated_one() -> None:
    before = _session(ASCII)
    values = _generate(before)
    after = _session({"name": "password", "kind": "ascii", "value": "correct horse"})
    assert _update(before, values, after)["password"].data == b"correct horse"


def test_removed_explicit_value_is_not_carried_over() -> None:
    before = _session({"name": "password", "kind": "ascii", "value": "correct horse"})
    values = _generate(before)
    new = _update(before, values, _session(ASCII))["password"]
    assert new.data != b"correct horse"
    assert new.data is not None
    assert len(new.data) == 20


def test_explicit_value_kept_as_written() -> None:
    spec = {"name": "blob", "kind": "binary", "value": base64.b64encode(b"\x00\x01\xff").decode()}
    before = _session(spec)
    values = _generate(before)
    assert values["blob"].data == b"\x00\x01\xff"
    assert _update(before, values, _session(spec))["blob"].data == b"\x00\x01\xff"


def test_previous_value_of_the_wrong_kind_is_not_used() -> None:
    before = _session(ASCII)
    values = {"password": SecretValue(kind="binary", data=b"x" * 20)}
    assert _update(before, values, _session(ASCII))["password"].kind == "ascii"


KEY = {"name": "key", "kind": "private-key", "key_type": "P-256"}


def test_private_key_kept_with_migrate() -> None:
    before = _session(KEY)
    values = _generate(before)
    after = _session({**KEY, "migrate": True})
    assert _update(before, values, after)["key"] == values["key"]


def test_private_key_regenerated_without_migrate() -> None:
    before = _session({**KEY, "migrate": True})
    values = _generate(before)
    new = _update(before, values, _session(KEY))["key"]
    assert key_hash(new.private_key()) != key_hash(values["key"].private_key())


def test_migrate_refuses_a_key_type_change() -> None:
    before = _session({**KEY, "migrate": True})
    values = _generate(before)
    after = _session({**KEY, "migrate": True, "key_type": "P-384"})
    with pytest.raises(SessionError) as error:
        _update(before, values, after)
    assert [p.key for p in error.value.problems] == ["secrets[0].migrate"]
    assert "P-256" in str(error.value)
    assert "P-384" in str(error.value)


def test_key_type_change_without_migrate_makes_a_new_key() -> None:
    before = _session(KEY)
    values = _generate(before)
    new = _update(before, values, _session({**KEY, "key_type": "Ed25519"}))["key"]
    assert key_type_of(new.private_key()) == "Ed25519"


def test_migrate_on_a_new_secret_makes_a_key() -> None:
    before = _session(ASCII)
    values = _generate(before)
    new = _update(before, values, _session(ASCII, {**KEY, "migrate": True}))
    assert key_type_of(new["key"].private_key()) == "P-256"


def test_certificates_are_reissued_on_every_update() -> None:
    before = _session(CA, SERVER)
    values = _generate(before)
    new = _update(before, values, before)
    for name in ("ca", "server"):
        assert new[name].certificate().serial_number != values[name].certificate().serial_number
        # The implicit key of a certificate is never carried over.
        assert new[name].private_key_pem != values[name].private_key_pem
    verify_issued_by(new["server"].certificate(), new["ca"].certificate())


def test_certificate_keeps_its_migrated_private_key() -> None:
    before = _session(
        {**KEY, "name": "ca-key", "migrate": True},
        {"name": "ca", "kind": "x509-ca", "private_key": "ca-key"},
        {**SERVER, "key_type": None, "private_key": "server-key"},
        {**KEY, "name": "server-key"},
    )
    values = _generate(before)
    new = _update(before, values, before)
    assert new["ca"].private_key_pem == values["ca"].private_key_pem
    assert new["ca"].certificate() != values["ca"].certificate()
    assert new["server"].private_key_pem != values["server"].private_key_pem
    verify_issued_by(new["server"].certificate(), new["ca"].certificate())
    # The CA key stayed, so a certificate the old CA issued still verifies with the new CA.
    verify_issued_by(values["server"].certificate(), new["ca"].certificate())


def test_previous_values_need_the_previous_session() -> None:
    with pytest.raises(ValueError, match="together"):
        generate_values(_session(ASCII), {}, None)
    with pytest.raises(ValueError, match="together"):
        generate_values(_session(ASCII), None, _session(ASCII))


# --- imported secrets -----------------------------------------------------------------------------

IMPORT = {"name": "shared", "kind": None, "import": {"session": "org/exporter", "secret": "token"}}


def test_imported_values_are_passed_through() -> None:
    value = SecretValue(kind="ascii", data=b"from the exporter")
    values = _generate(_session(ASCII, IMPORT), imported={"shared": value})
    assert values["shared"] is value
    assert set(values) == {"password", "shared"}


def test_imported_value_missing() -> None:
    with pytest.raises(SessionError) as error:
        _generate(_session(IMPORT))
    assert [p.key for p in error.value.problems] == ["secrets[0].import"]


def test_imported_value_of_another_kind_than_declared() -> None:
    value = SecretValue(kind="binary", data=b"\x00")
    with pytest.raises(SessionError, match="declared as ascii"):
        _generate(_session({**IMPORT, "kind": "ascii"}), imported={"shared": value})


def test_imported_values_for_secrets_that_are_not_imported() -> None:
    with pytest.raises(ValueError, match="not imported"):
        _generate(_session(ASCII), imported={"password": SecretValue(kind="ascii", data=b"x")})


def test_imported_secret_is_never_carried_over_or_generated() -> None:
    before = _session(ASCII)
    values = _generate(before)
    after = _session({**IMPORT, "name": "password"})
    with pytest.raises(SessionError):
        _update(before, values, after)


# --- explicit values ------------------------------------------------------------------------------


def test_explicit_private_key_is_normalised_to_pkcs8() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    traditional = _pem(key, serialization.PrivateFormat.TraditionalOpenSSL)
    assert "EC PRIVATE KEY" in traditional
    spec = {"name": "k", "kind": "private-key", "key_type": "P-384", "value": traditional}
    value = _generate(_session(spec))["k"]
    assert value.private_key_pem == _pem(key)


def test_explicit_private_key_of_another_type_than_key_type() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    spec = {"name": "k", "kind": "private-key", "key_type": "P-256", "value": _pem(key)}
    with pytest.raises(SessionError) as error:
        _generate(_session(spec))
    assert [p.key for p in error.value.problems] == ["secrets[0].key_type"]
    assert "set key_type: RSA-2048" in str(error.value)
    assert "BEGIN" not in str(error.value)


def test_explicit_private_key_that_does_not_load() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"password"),
    ).decode()
    spec = {"name": "k", "kind": "private-key", "key_type": "P-256", "value": encrypted}
    with pytest.raises(SessionError, match="encrypted"):
        _generate(_session(spec))


def _explicit_certificate(
    key: Any, *, is_ca: bool = False, issuer: tuple[Any, x509.Certificate] | None = None
) -> x509.Certificate:
    return issue_certificate(
        key,
        common_name="given",
        is_ca=is_ca,
        now=NOW,
        valid_for=timedelta(days=10),
        issuer=Issuer(*issuer) if issuer else None,
    )


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_explicit_certificate_with_its_private_key_and_chain() -> None:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _explicit_certificate(root_key, is_ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _explicit_certificate(key, issuer=(root_key, root))
    session = _session(
        {"name": "k", "kind": "private-key", "key_type": "P-256", "value": _pem(key)},
        {
            "name": "c",
            "kind": "x509",
            "private_key": "k",
            "value": _cert_pem(cert) + _cert_pem(root),
        },
    )
    value = _generate(session)["c"]
    assert value.certificate() == cert
    assert value.private_key_pem == _pem(key)
    assert load_certificate_chain_pem((value.chain_pem or "").encode()) == [cert, root]


def test_explicit_certificate_must_carry_the_named_key() -> None:
    cert = _explicit_certificate(ec.generate_private_key(ec.SECP256R1()))
    session = _session(
        KEY, {"name": "c", "kind": "x509", "private_key": "key", "value": _cert_pem(cert)}
    )
    with pytest.raises(SessionError, match="does not carry the key"):
        _generate(session)


def test_explicit_ca_must_be_a_ca_certificate() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _explicit_certificate(key)
    session = _session(
        {**KEY, "value": _pem(key)},
        {"name": "c", "kind": "x509-ca", "private_key": "key", "value": _cert_pem(cert)},
    )
    with pytest.raises(SessionError, match="CA certificate"):
        _generate(session)


def test_explicit_ca_issues_the_session_certificates() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    ca = _explicit_certificate(key, is_ca=True)
    session = _session(
        {**KEY, "key_type": "P-384", "value": _pem(key)},
        {"name": "ca", "kind": "x509-ca", "private_key": "key", "value": _cert_pem(ca)},
        SERVER,
    )
    values = _generate(session)
    verify_issued_by(values["server"].certificate(), ca)
    # Cut to the given CA's validity.
    assert values["server"].certificate().not_valid_after_utc == ca.not_valid_after_utc


def test_problems_of_several_secrets_are_all_reported() -> None:
    bad_key = {"name": "k1", "kind": "private-key", "key_type": "P-384"}
    rsa_pem = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    session = _session(
        {**bad_key, "value": rsa_pem},
        {**bad_key, "name": "k2", "value": rsa_pem},
        {"name": "c", "kind": "x509", "private_key": "k1"},
    )
    with pytest.raises(SessionError) as error:
        _generate(session)
    # The certificate needing k1 fails too, but only k1's own problem is reported.
    assert [p.key for p in error.value.problems] == ["secrets[1].key_type", "secrets[2].key_type"]


# --- rendering ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered() -> dict[str, SecretValue]:
    session = _session(
        {"name": "text", "kind": "ascii", "value": "hello world"},
        {"name": "bytes", "kind": "binary", "value": base64.b64encode(b"\xfb\xff\x00").decode()},
        {"name": "key", "kind": "private-key", "key_type": "P-256"},
        CA,
        SERVER,
    )
    return generate_values(session, now=NOW)


@pytest.mark.parametrize(
    ("name", "selector", "fmt", "expected"),
    [
        ("text", None, None, "hello world"),
        ("text", None, "hex", b"hello world".hex()),
        ("text", None, "base64", "aGVsbG8gd29ybGQ="),
        ("text", None, "base64url", "aGVsbG8gd29ybGQ"),
        ("bytes", None, None, "fbff00"),
        ("bytes", None, "hex", "fbff00"),
        ("bytes", None, "base64", "+/8A"),
        ("bytes", None, "base64url", "-_8A"),
    ],
)
def test_render_data(
    rendered: dict[str, SecretValue],
    name: str,
    selector: str | None,
    fmt: str | None,
    expected: str,
) -> None:
    assert render_value(rendered[name], selector, fmt) == expected


def test_render_private_key(rendered: dict[str, SecretValue]) -> None:
    value = rendered["key"]
    for fmt in (None, "pem", "privatekey"):
        assert render_value(value, None, fmt) == value.private_key_pem


def test_render_certificates(rendered: dict[str, SecretValue]) -> None:
    value = rendered["server"]
    cert, key, chain = value.certificate_pem, value.private_key_pem, value.chain_pem
    assert chain is not None
    assert chain.count("BEGIN CERTIFICATE") == 2
    expectations = {
        (None, None): cert,
        (None, "crt"): cert,
        (None, "pem"): cert,
        (None, "chain"): chain,
        (None, "privatekey"): key,
        ("crt", None): cert,
        ("crt", "crt"): cert,
        ("crt", "pem"): cert,
        ("key", None): key,
        ("key", "privatekey"): key,
        ("key", "pem"): key,
        ("chain", None): chain,
        ("chain", "chain"): chain,
        ("chain", "pem"): chain,
    }
    for (selector, fmt), expected in expectations.items():
        assert render_value(value, selector, fmt) == expected, (selector, fmt)
    der = base64.b64decode(render_value(value, None, "der"), validate=True)
    assert x509.load_der_x509_certificate(der) == value.certificate()
    assert render_value(value, "crt", "der") == render_value(value, None, "der")
    assert render_value(rendered["ca"], None, None) == rendered["ca"].certificate_pem


@pytest.mark.parametrize(
    ("name", "selector", "fmt"),
    [
        ("text", None, "pem"),
        ("text", None, "crt"),
        ("text", None, "der"),
        ("text", None, "privatekey"),
        ("text", "crt", None),
        ("bytes", None, "pem"),
        ("bytes", None, "chain"),
        ("bytes", "key", None),
        ("key", None, "hex"),
        ("key", None, "crt"),
        ("key", None, "der"),
        ("key", "key", None),
        ("server", None, "hex"),
        ("server", None, "base64"),
        ("server", "key", "crt"),
        ("server", "key", "der"),
        ("server", "chain", "der"),
        ("server", "crt", "privatekey"),
        ("server", "crt", "chain"),
        ("server", "public", None),
        ("server", None, "bogus"),
    ],
)
def test_render_refuses_impossible_combinations(
    rendered: dict[str, SecretValue], name: str, selector: str | None, fmt: str | None
) -> None:
    with pytest.raises(ValueError, match=r"does not fit|applies only|unknown selector"):
        render_value(rendered[name], selector, fmt)


# --- records --------------------------------------------------------------------------------------


def test_record_round_trip_for_every_kind(rendered: dict[str, SecretValue]) -> None:
    for name in ("text", "bytes", "key", "ca", "server"):
        value = rendered[name]
        record = value.to_record()
        assert record["kind"] == value.kind
        assert SecretValue.from_record(json.loads(json.dumps(record))) == value


def test_repr_hides_the_value(rendered: dict[str, SecretValue]) -> None:
    for value in rendered.values():
        text = repr(value) + str(value)
        assert value.kind in text
        assert "hello" not in text
        assert "aGVsbG8" not in text
        assert "BEGIN" not in text
        assert "fbff00" not in text
        assert "\\xfb" not in text


def test_value_shape_is_checked() -> None:
    with pytest.raises(ValueError, match="exactly the fields"):
        SecretValue(kind="ascii")
    with pytest.raises(ValueError, match="exactly the fields"):
        SecretValue(kind="ascii", data=b"x", private_key_pem="k")
    with pytest.raises(ValueError, match="exactly the fields"):
        SecretValue(kind="x509", private_key_pem="k")
    with pytest.raises(ValueError, match="unknown secret kind"):
        SecretValue(kind="otp", data=b"x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bytes"):
        SecretValue(kind="binary", data="text")  # type: ignore[arg-type]


def _bad_records(values: dict[str, SecretValue]) -> list[tuple[object, str]]:
    ascii_record = values["text"].to_record()
    key_record = values["key"].to_record()
    server = values["server"].to_record()
    ca = values["ca"].to_record()
    return [
        ("not a record", "must be an object"),
        ({"kind": "otp", "data": "eA=="}, "known 'kind'"),
        ({"data": "eA=="}, "known 'kind'"),
        ({**ascii_record, "extra": "x"}, "exactly the fields"),
        ({"kind": "binary"}, "exactly the fields"),
        ({"kind": "binary", "data": 5}, "must be a string"),
        ({"kind": "binary", "data": "not base64!"}, "base64"),
        ({"kind": "binary", "data": ""}, "empty"),
        ({"kind": "ascii", "data": base64.b64encode(b"\xff\xfe").decode()}, "UTF-8"),
        ({**key_record, "private_key_pem": "garbage"}, "private_key_pem"),
        ({**server, "private_key_pem": ca["private_key_pem"]}, "does not carry its private key"),
        ({**server, "chain_pem": ca["chain_pem"]}, "does not start with its certificate"),
        ({**server, "certificate_pem": server["chain_pem"]}, "exactly one"),
        ({**server, "certificate_pem": "garbage"}, "certificates"),
    ]


def test_bad_records_are_refused(rendered: dict[str, SecretValue]) -> None:
    for record, words in _bad_records(rendered):
        with pytest.raises(ValueError, match=words):
            SecretValue.from_record(record)


def test_record_errors_never_show_the_value(rendered: dict[str, SecretValue]) -> None:
    record = {**rendered["key"].to_record()}
    record["private_key_pem"] = record["private_key_pem"][:-40]
    with pytest.raises(ValueError) as error:
        SecretValue.from_record(record)
    assert "BEGIN" not in str(error.value)
    assert record["private_key_pem"][40:80] not in str(error.value)


# --- import decisions -----------------------------------------------------------------------------


def _exporter(*export: dict[str, Any], name: str = "org/exporter", **extra: Any) -> Session:
    return _session(
        {"name": "token", "kind": "ascii", "size": 20, "export": list(export), **extra}, name=name
    )


def _importer(name: str = "org/app", **import_extra: Any) -> Session:
    spec = {"session": "org/exporter", "secret": "token", **import_extra}
    return _session(ASCII, {"name": "shared", "kind": None, "import": spec}, name=name)


def _check(
    importer: Session,
    exporter: Session | None,
    exporter_hash: str | None = HASH_A,
    importer_hash: str | None = HASH_B,
) -> None:
    spec = importer.secrets[1].import_
    assert spec is not None
    check_import(importer, spec, exporter, exporter_hash, importer_hash)


def _refusal(
    importer: Session,
    exporter: Session | None,
    exporter_hash: str | None = HASH_A,
    importer_hash: str | None = HASH_B,
) -> str:
    with pytest.raises(SessionError) as error:
        _check(importer, exporter, exporter_hash, importer_hash)
    assert [p.key for p in error.value.problems] == ["secrets[1].import"]
    text = str(error.value)
    # Names the importing secret, the exporter session and its secret.
    assert "'shared'" in text
    assert "'org/exporter'" in text
    assert "'token'" in text
    return text


def test_import_exported_to_the_session() -> None:
    _check(_importer(), _exporter({"session": "org/app"}))
    _check(_importer(), _exporter({"session": "org/other"}, {"session": "org/app"}))


@pytest.mark.parametrize(
    ("namespace", "importer_name", "allowed"),
    [
        ("org", "org/app", True),
        ("org/app", "org/app", True),
        ("a/b", "a/b/c", True),
        ("a/b", "a/b/c/d", True),
        ("a/b", "a/bc", False),
        ("a/b", "a", False),
        ("a/b", "x/a/b", False),
        ("a/b/c", "a/b", False),
    ],
)
def test_import_by_namespace(namespace: str, importer_name: str, allowed: bool) -> None:
    importer = _importer(name=importer_name)
    exporter = _exporter({"namespace": namespace})
    if allowed:
        _check(importer, exporter)
    else:
        assert "not exported to session" in _refusal(importer, exporter)


def test_import_from_a_missing_session() -> None:
    assert "does not exist" in _refusal(_importer(), None)


def test_import_of_a_missing_secret() -> None:
    exporter = _session({"name": "other", "kind": "ascii", "size": 20}, name="org/exporter")
    assert "no such secret" in _refusal(_importer(), exporter)


def test_import_not_exported() -> None:
    assert "not exported" in _refusal(_importer(), _exporter())
    assert "not exported" in _refusal(_importer(), _exporter({"session": "org/app2"}))


def test_import_pinned_to_the_exporter_hash() -> None:
    exporter = _exporter({"session": "org/app"})
    _check(_importer(session_hash=HASH_A), exporter, exporter_hash=HASH_A)
    text = _refusal(_importer(session_hash=HASH_A), exporter, exporter_hash=HASH_B)
    assert "pinned" in text
    assert HASH_A in text
    assert HASH_B in text
    assert "pinned" in _refusal(_importer(session_hash=HASH_A), exporter, exporter_hash=None)


def test_export_pinned_to_the_importer_hash() -> None:
    exporter = _exporter({"session": "org/app", "session_hash": HASH_B})
    _check(_importer(), exporter, importer_hash=HASH_B)
    text = _refusal(_importer(), exporter, importer_hash=HASH_A)
    assert "only at session hash" in text
    assert HASH_B in text
    assert "only at session hash" in _refusal(_importer(), exporter, importer_hash=None)


def test_a_pinned_export_and_a_namespace_export() -> None:
    exporter = _exporter({"session": "org/app", "session_hash": HASH_B}, {"namespace": "org"})
    _check(_importer(), exporter, importer_hash=HASH_A)


def test_import_of_an_imported_secret_is_refused() -> None:
    exporter = _session(
        {"name": "token", "kind": None, "import": {"session": "org/third", "secret": "x"}},
        name="org/exporter",
    )
    assert "itself imported" in _refusal(_importer(), exporter)


def test_import_declaring_another_kind() -> None:
    importer = _session(
        ASCII,
        {
            "name": "shared",
            "kind": "binary",
            "import": {"session": "org/exporter", "secret": "token"},
        },
    )
    assert "declared as binary" in _refusal(importer, _exporter({"session": "org/app"}))


def test_import_from_itself() -> None:
    importer = _importer(name="org/exporter")
    assert "itself" in _refusal(importer, _exporter({"session": "org/exporter"}))


def test_import_with_the_wrong_exporter_session() -> None:
    with pytest.raises(ValueError, match="not 'org/exporter'"):
        _check(_importer(), _exporter({"session": "org/app"}, name="org/else"))


# --- public values --------------------------------------------------------------------------------


def test_public_values() -> None:
    session = _session(
        {"name": "text", "kind": "ascii", "value": "public text", "export_public": True},
        {"name": "bytes", "kind": "binary", "size": 4, "export_public": True},
        {**KEY, "export_public": True},
        {**CA, "export_public": True},
        SERVER,
        {"name": "hidden", "kind": "ascii", "size": 8},
    )
    values = _generate(session)
    public = public_values(session, values)
    assert set(public) == {"text", "bytes", "key", "ca"}
    assert public["text"] == "public text"
    assert public["bytes"] == (values["bytes"].data or b"").hex()
    assert public["ca"] == values["ca"].certificate_pem
    loaded = serialization.load_pem_public_key(public["key"].encode())
    assert isinstance(loaded, ec.EllipticCurvePublicKey)
    assert key_hash(loaded) == key_hash(values["key"].private_key())
    assert all("PRIVATE" not in text for text in public.values())


def test_public_values_leave_out_secrets_without_a_value() -> None:
    session = _session({**CA, "export_public": True})
    assert public_values(session, {}) == {}


# --- a session written in YAML, created, updated and rendered -------------------------------------

YAML_V1 = """
name: org/web
version: "0.3"
services:
  - name: api
    command: serve --password $$CAS::password$$ --token $$CAS::token:base64$$
    environment:
      TLS_CERT: $$CAS::server.crt$$
      TLS_KEY: $$CAS::server.key$$
      CA_CHAIN: $$SCONE::server:chain$$
secrets:
  - name: password
    kind: ascii
  - name: token
    kind: binary
    size: 16
  - name: ca-key
    kind: private-key
    migrate: true
  - name: ca
    kind: x509-ca
    private_key: ca-key
    common_name: Web CA
    export_public: true
  - name: server
    kind: x509
    issuer: ca
    dns: [api.example.com]
    endpoint: server
"""


def test_yaml_session_created_updated_and_rendered() -> None:
    first = parse_session(YAML_V1)
    values = _generate(first)
    assert len(values["password"].data or b"") == 20  # the parser's default size
    assert key_type_of(values["ca-key"].private_key()) == "P-256"  # the default key type

    second = parse_session(YAML_V1.replace("size: 16", "size: 24"))
    updated = _update(first, values, second)
    assert updated["password"] == values["password"]
    assert updated["ca-key"] == values["ca-key"]
    assert len(updated["token"].data or b"") == 24
    assert updated["server"].certificate() != values["server"].certificate()
    verify_issued_by(updated["server"].certificate(), updated["ca"].certificate())
    verify_issued_by(values["server"].certificate(), updated["ca"].certificate())

    service = second.services[0]

    def resolve(placeholder: Placeholder) -> str:
        value = updated[placeholder.secret]
        return render_value(value, placeholder.selector, placeholder.format)

    command = [render(part, resolve) for part in service.command]
    password = (updated["password"].data or b"").decode()
    token = base64.b64encode(updated["token"].data or b"").decode()
    assert command == ["serve", "--password", password, "--token", token]
    environment = {name: render(text, resolve) for name, text in service.environment.items()}
    assert environment["TLS_CERT"] == updated["server"].certificate_pem
    assert environment["TLS_KEY"] == updated["server"].private_key_pem
    assert environment["CA_CHAIN"] == updated["server"].chain_pem
    assert public_values(second, updated) == {"ca": updated["ca"].certificate_pem}


def test_yaml_private_key_value_of_another_type_needs_key_type() -> None:
    rsa_pem = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    text = f"""
name: org/keys
version: "0.3"
secrets:
  - name: key
    kind: private-key
    value: |
{textwrap.indent(rsa_pem, "      ")}"""
    with pytest.raises(SessionError, match="set key_type: RSA-2048"):
        _generate(parse_session(text))
    fixed = text.replace("kind: private-key", "kind: private-key\n    key_type: RSA-2048")
    assert key_type_of(_generate(parse_session(fixed))["key"].private_key()) == "RSA-2048"
