"""The owner config: formats, synonyms, validation, normal form, hashing and redaction."""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from opencas.config.owner import (
    IAS_END_OF_LIFE,
    REDACTED,
    ApiIdentity,
    AuditLogConfig,
    LoadedOwnerConfig,
    OwnerConfig,
    OwnerConfigFormat,
    load_owner_config,
    owner_config_format,
    owner_config_from_normal_form,
    owner_config_sha256,
    parse_owner_config,
)
from opencas.crypto.x509 import general_name
from opencas.errors import ConfigError

SCONE_STYLE = Path(__file__).resolve().parents[2] / "data" / "owner-configs" / "scone-style.toml"

SUBSCRIPTION_KEY = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
SP_KEY = "sp-key-that-must-never-be-shown"


def make_certificate_pem(common_name: str = "audit CA") -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


CA_PEM = make_certificate_pem()


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def parse_error(text: str, fmt: OwnerConfigFormat = "toml", source: str = "owner.toml") -> str:
    with pytest.raises(ConfigError) as caught:
        parse_owner_config(text, source, fmt)
    return caught.value.message


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_owner_config(path)
    return caught.value.message


# --- one full config, written three ways ---------------------------------------------------------

FULL_TOML = f"""\
[api_identity]
common_name = "cas.example.com"
alt_names = ["cas.example.com", "10.0.0.1", "::1"]
country_name = "DE"
org_name = "Example GmbH"
state_or_province = "Saxony"
locality = "Dresden"
email = "ops@example.com"

[dcap]
pccs_url = "https://pccs.example.com:8081/sgx/certification/v4/"
subscription_key = "{SUBSCRIPTION_KEY}"

[audit_log]
mode = "signed"
sink = "network"
url = "https://audit.example.com:6514/log"
server_ca_certificate = '''
{CA_PEM}'''
"""

FULL_DATA: dict[str, Any] = {
    "api_identity": {
        "common_name": "cas.example.com",
        "alt_names": ["cas.example.com", "10.0.0.1", "::1"],
        "country_name": "DE",
        "org_name": "Example GmbH",
        "state_or_province": "Saxony",
        "locality": "Dresden",
        "email": "ops@example.com",
    },
    "dcap": {
        "pccs_url": "https://pccs.example.com:8081/sgx/certification/v4/",
        "subscription_key": SUBSCRIPTION_KEY,
    },
    "audit_log": {
        "mode": "signed",
        "sink": "network",
        "url": "https://audit.example.com:6514/log",
        "server_ca_certificate": CA_PEM,
    },
}

FULL_JSON = json.dumps(FULL_DATA, indent=2)

INDENTED_PEM = "".join(f"    {line}\n" for line in CA_PEM.splitlines())
FULL_YAML = f"""\
# keys in another order, synonyms and spellings as YAML writes them
audit_log:
  sink: network
  mode: signed
  server_ca_certificate: |
{INDENTED_PEM}  url: "https://audit.example.com:6514/log"
dcap:
  subscription_key: {SUBSCRIPTION_KEY}
  pccs_url: https://pccs.example.com:8081/sgx/certification/v4/
api:
  identity:
    email: ops@example.com
    locality: Dresden
    state_or_province: Saxony
    org_name: Example GmbH
    country_name: de
    alt_names: [cas.example.com, 10.0.0.1, "::1"]
    common_name: cas.example.com
"""


# --- valid files ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text"),
    [("owner.toml", ""), ("owner.json", "{}"), ("owner.yaml", ""), ("owner.yml", "# nothing\n")],
)
def test_empty_file_is_a_valid_owner_config(tmp_path: Path, name: str, text: str) -> None:
    loaded = load_owner_config(write(tmp_path, name, text))

    assert loaded == LoadedOwnerConfig(OwnerConfig(), ())
    assert loaded.config.normal_form() == {"audit_log": {"mode": "signed", "sink": "file"}}
    assert loaded.config.api_identity is None
    assert loaded.config.dcap is None
    assert loaded.config.ias is None


@pytest.mark.parametrize(
    ("name", "text"), [("owner.toml", FULL_TOML), ("o.json", FULL_JSON), ("o.yaml", FULL_YAML)]
)
def test_full_config_loads_in_every_format(tmp_path: Path, name: str, text: str) -> None:
    loaded = load_owner_config(write(tmp_path, name, text))

    assert loaded.warnings == ()
    assert loaded.config.normal_form() == FULL_DATA


def test_every_format_hashes_the_same(tmp_path: Path) -> None:
    configs = [
        load_owner_config(write(tmp_path, name, text)).config
        for name, text in [("a.toml", FULL_TOML), ("b.json", FULL_JSON), ("c.yaml", FULL_YAML)]
    ]

    assert configs[0] == configs[1] == configs[2]
    assert len({owner_config_sha256(config) for config in configs}) == 1


def test_synonym_key_order_and_spelled_out_defaults_hash_the_same() -> None:
    short = parse_owner_config(
        '[api_identity]\ncommon_name = "cas"\ncountry_name = "CH"\n', "a.toml", "toml"
    ).config
    long = parse_owner_config(
        """\
[audit_log]
sink = "file"
mode = "signed"

[api.identity]
country_name = "ch"
alt_names = []
common_name = "cas"

[dcap]
""",
        "b.toml",
        "toml",
    ).config

    assert long == short
    assert owner_config_sha256(long) == owner_config_sha256(short)


def test_normal_form_resolves_the_synonym_and_fills_in_defaults() -> None:
    config = parse_owner_config('[api.identity]\ncountry_name = "fr"\n', "o.toml", "toml").config

    assert config.normal_form() == {
        "api_identity": {"alt_names": [], "country_name": "FR"},
        "audit_log": {"mode": "signed", "sink": "file"},
    }


def test_a_section_that_sets_only_defaults_is_the_same_as_no_section() -> None:
    config = parse_owner_config(
        "[api_identity]\nalt_names = []\n[dcap]\n[ias]\nlinkable_quotes = false\n", "o", "toml"
    ).config

    assert config == OwnerConfig()


def test_values_take_their_canonical_spelling() -> None:
    config = parse_owner_config(
        """\
[api_identity]
alt_names = ["CAS.Example.COM", "0:0:0:0:0:0:0:1", "2001:DB8:0::1"]
country_name = "gb"

[ias]
spid = "ABCDEF0123456789ABCDEF0123456789"
""",
        "o.toml",
        "toml",
    ).config

    assert config.api_identity is not None
    assert config.api_identity.alt_names == ("cas.example.com", "::1", "2001:db8::1")
    assert config.api_identity.country_name == "GB"
    assert config.ias is not None
    assert config.ias.spid == "abcdef0123456789abcdef0123456789"


def test_certificate_is_kept_in_canonical_pem_so_line_endings_do_not_matter() -> None:
    crlf = CA_PEM.replace("\n", "\r\n")
    data = {
        "audit_log": {
            "sink": "network",
            "url": "https://audit.example",
            "server_ca_certificate": crlf,
        }
    }

    config = parse_owner_config(json.dumps(data), "o.json", "json").config

    assert config.audit_log.server_ca_certificate == CA_PEM


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("owner.toml", "toml"),
        ("owner.JSON", "json"),
        ("owner.yaml", "yaml"),
        ("owner.YML", "yaml"),
        ("owner.conf", "toml"),
        ("owner", "toml"),
    ],
)
def test_format_follows_the_extension(name: str, expected: str) -> None:
    assert owner_config_format(Path(name)) == expected


def test_unknown_extension_is_read_as_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "owner.conf", '[api_identity]\ncommon_name = "cas"\n')

    assert load_owner_config(path).config.normal_form()["api_identity"]["common_name"] == "cas"


def test_scone_style_fixture_loads_and_matches_the_canonical_spelling() -> None:
    loaded = load_owner_config(SCONE_STYLE)

    identity = loaded.config.api_identity
    assert identity is not None
    assert identity.common_name == "cas.example.com"
    assert identity.country_name == "DE"
    assert loaded.config.dcap is not None
    assert loaded.config.audit_log == AuditLogConfig(mode="signed", sink="file")
    assert loaded.warnings == (f"{SCONE_STYLE}:17: {IAS_END_OF_LIFE}",)
    rewritten = owner_config_from_normal_form(json.loads(json.dumps(loaded.config.normal_form())))
    assert owner_config_sha256(rewritten) == owner_config_sha256(loaded.config)


# --- the X.509 view of the identity -------------------------------------------------------------


def test_identity_gives_the_certificate_subject_and_alternative_names() -> None:
    config = parse_owner_config(FULL_TOML, "o.toml", "toml").config
    identity = config.api_identity
    assert identity is not None

    assert identity.subject_name() == x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "Saxony"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Dresden"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example GmbH"),
            x509.NameAttribute(NameOID.COMMON_NAME, "cas.example.com"),
            x509.NameAttribute(NameOID.EMAIL_ADDRESS, "ops@example.com"),
        ]
    )
    assert [general_name(name) for name in identity.alt_names] == [
        x509.DNSName("cas.example.com"),
        x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]


def test_subject_holds_only_the_attributes_that_are_set() -> None:
    identity = ApiIdentity.model_validate({"common_name": "cas"})

    assert identity.subject_name().rfc4514_string() == "CN=cas"
    assert [general_name(name) for name in identity.alt_names] == []


# --- [ias] --------------------------------------------------------------------------------------

IAS_SECTION = """\
[ias]
spid = "0123456789abcdef0123456789abcdef"
linkable_quotes = true
sp_key = "{sp_key}"
base_uri = "https://api.trustedservices.intel.com/sgx/dev"
"""


def test_ias_section_is_accepted_with_a_warning() -> None:
    loaded = parse_owner_config(
        "[dcap]\n" + IAS_SECTION.format(sp_key=SP_KEY), "owner.toml", "toml"
    )

    assert loaded.warnings == (
        "owner.toml:2: the [ias] section is not used: "
        "Intel's EPID attestation service has reached end of life",
    )
    assert loaded.config.ias is not None
    assert loaded.config.ias.linkable_quotes is True
    assert loaded.config.ias.sp_key is not None
    assert loaded.config.ias.sp_key.get_secret_value() == SP_KEY


def test_scones_ias_base_url_and_identity_are_accepted_as_unused() -> None:
    url = "https://api.trustedservices.intel.com/sgx/dev"
    text = f'[ias]\nbase_url = "{url}"\nidentity = "ias-client"\n'

    loaded = parse_owner_config(text, "owner.toml", "toml")

    assert loaded.warnings == (
        "owner.toml:1: the [ias] section is not used: "
        "Intel's EPID attestation service has reached end of life",
    )
    assert loaded.config.ias is not None
    assert loaded.config.ias.identity == "ias-client"


def test_unknown_key_in_ias_is_refused() -> None:
    message = parse_error(IAS_SECTION.format(sp_key=SP_KEY) + 'quote_type = "linkable"\n')

    assert message == (
        "owner.toml:6: [ias] quote_type: unknown key; "
        "expected one of: base_uri, base_url, identity, linkable_quotes, sp_key, spid"
    )


def test_bad_spid() -> None:
    assert parse_error('[ias]\nspid = "0123"\n') == (
        "owner.toml:2: [ias] spid: expected 32 hexadecimal digits"
    )


# --- synonyms -----------------------------------------------------------------------------------


def test_both_spellings_of_the_identity_section_are_refused() -> None:
    message = parse_error(
        '[api_identity]\ncommon_name = "a"\n\n[api.identity]\ncommon_name = "a"\n'
    )

    assert message == (
        "owner.toml:4: [api.identity]: the same section as [api_identity] (line 1); "
        "write only one of the two"
    )


def test_other_keys_under_api_are_unknown() -> None:
    assert parse_error('[api]\nlisten = "x"\n') == (
        "owner.toml:2: [api] listen: unknown key; expected one of: identity"
    )


def test_unknown_section_lists_the_sections() -> None:
    assert parse_error("[audit]\nmode = 'signed'\n") == (
        "owner.toml:1: [audit]: unknown section; "
        "expected one of: api, api_identity, audit_log, dcap, ias, recovery"
    )


# --- errors name the file, the key and the line ---------------------------------------------------

# (TOML body, key label, line of the offending key, what the message says)
BAD_VALUES = [
    ('[api_identity]\ncountry_name = "DEU"\n', "[api_identity] country_name", 2, "two-letter"),
    ('[api_identity]\ncountry_name = "D1"\n', "[api_identity] country_name", 2, "two-letter"),
    ('[api_identity]\ncommon_name = ""\n', "[api_identity] common_name", 2, "at least 1"),
    (
        "[api_identity]\ncommon_name = '" + "c" * 65 + "'\n",
        "[api_identity] common_name",
        2,
        "at most 64",
    ),
    ('[api_identity]\norg_name = " Acme"\n', "[api_identity] org_name", 2, "whitespace"),
    ('[api_identity]\nlocality = "a\\tb"\n', "[api_identity] locality", 2, "control character"),
    ('[api_identity]\nemail = "nobody"\n', "[api_identity] email", 2, "NAME@DOMAIN"),
    ('[api_identity]\nemail = "a@localhost"\n', "[api_identity] email", 2, "two labels"),
    ('[api_identity]\nemail = "a b@x.org"\n', "[api_identity] email", 2, "before '@'"),
    (
        '[api_identity]\nalt_names = [\n  "ok.example",\n  "bad_name",\n]\n',
        "[api_identity] alt_names[1]",
        4,
        "neither",
    ),
    (
        '[api_identity]\nalt_names = ["*.example.com"]\n',
        "[api_identity] alt_names[0]",
        2,
        "neither",
    ),
    (
        '[api_identity]\nalt_names = ["a.example", "A.example"]\n',
        "[api_identity] alt_names",
        2,
        "listed twice",
    ),
    ('[dcap]\npccs_url = "ftp://pccs.example"\n', "[dcap] pccs_url", 2, "https://"),
    ('[dcap]\npccs_url = "https://u:p@pccs.example"\n', "[dcap] pccs_url", 2, "user name"),
    ('[dcap]\npccs_url = "https://"\n', "[dcap] pccs_url", 2, "no host"),
    ('[dcap]\npccs_url = "https://pccs.example:99999/"\n', "[dcap] pccs_url", 2, "not a valid URL"),
    (
        '[audit_log]\nmode = "verbose"\n',
        "[audit_log] mode",
        2,
        "'disabled', 'unsigned' or 'signed'",
    ),
    ('[audit_log]\nsink = "syslog"\n', "[audit_log] sink", 2, "'file' or 'network'"),
    ('\n[ias]\nbase_uri = "http://api.example"\n', "[ias] base_uri", 3, "http://"),
]


@pytest.mark.parametrize(("body", "label", "line", "reason"), BAD_VALUES)
def test_toml_error_names_file_key_and_line(
    tmp_path: Path, body: str, label: str, line: int, reason: str
) -> None:
    path = write(tmp_path, "owner.toml", body)

    message = load_error(path)

    assert message.startswith(f"{path}:{line}: {label}: "), message
    assert reason in message
    assert len(message.splitlines()) == 1


YAML_BAD_VALUES = [
    ("api_identity:\n  country_name: DEU\n", "[api_identity] country_name", 2, "two-letter"),
    (
        "api:\n  identity:\n    alt_names:\n      - ok.example\n      - bad_name\n",
        "[api.identity] alt_names[1]",
        5,
        "neither",
    ),
    ("dcap:\n  pccs_url: http://pccs.example\n", "[dcap] pccs_url", 2, "http://"),
    ("audit_log:\n  sink: network\n", "[audit_log] url", 1, 'required when sink = "network"'),
    ("ias:\n  spid: 12\n", "[ias] spid", 2, "expected a string, got integer 12"),
    ("dcap:\n  pccs_url:\n", "[dcap] pccs_url", 2, "null is not a value"),
    ("dcap:\n  colour: blue\n", "[dcap] colour", 2, "unknown key"),
]


@pytest.mark.parametrize(("body", "label", "line", "reason"), YAML_BAD_VALUES)
def test_yaml_error_names_file_key_and_line(
    tmp_path: Path, body: str, label: str, line: int, reason: str
) -> None:
    path = write(tmp_path, "owner.yaml", body)

    message = load_error(path)

    assert message.startswith(f"{path}:{line}: {label}: "), message
    assert reason in message


def test_json_error_names_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "owner.json", json.dumps({"dcap": {"pccs_url": "http://x"}}))

    assert load_error(path).startswith(f"{path}:1: [dcap] pccs_url: plain http:// is refused")


def test_every_problem_is_reported_once_in_line_order() -> None:
    message = parse_error(
        """\
[dcap]
pccs_url = "http://pccs.example"

[api_identity]
country_name = 49
email = "x"

[audit_log]
url = "https://audit.example"
"""
    )

    assert [line.split(": ")[:2] for line in message.splitlines()] == [
        ["owner.toml:2", "[dcap] pccs_url"],
        ["owner.toml:5", "[api_identity] country_name"],
        ["owner.toml:6", "[api_identity] email"],
        ["owner.toml:9", "[audit_log] url"],
    ]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "[api_identity]\ncommon_name = 7\n",
            "[api_identity] common_name: expected a string, got integer 7",
        ),
        (
            '[api_identity]\nalt_names = "cas"\n',
            '[api_identity] alt_names: expected an array, got string "cas"',
        ),
        (
            "[api_identity]\nalt_names = [1]\n",
            "[api_identity] alt_names[0]: expected a string, got integer 1",
        ),
        ('api_identity = "cas"\n', '[api_identity]: expected a table, got string "cas"'),
        (
            '[ias]\nlinkable_quotes = "yes"\n',
            '[ias] linkable_quotes: expected true or false, got string "yes"',
        ),
        (
            "[audit_log]\nmode = true\n",
            "[audit_log] mode: expected 'disabled', 'unsigned' or 'signed', got boolean true",
        ),
        (
            "[dcap]\npccs_url = 2024-01-01\n",
            "[dcap] pccs_url: expected a string, got date/time 2024-01-01",
        ),
    ],
)
def test_wrong_types(body: str, expected: str) -> None:
    assert parse_error(body).split(": ", 1)[1] == expected


def test_http_pccs_url_is_refused_with_a_clear_message() -> None:
    assert parse_error('[dcap]\npccs_url = "http://pccs.example:8081/"\n') == (
        "owner.toml:2: [dcap] pccs_url: plain http:// is refused: the connection must be "
        "encrypted and authenticated; use https://"
    )


def test_too_many_alt_names() -> None:
    names = ", ".join(f'"h{i}.example"' for i in range(101))

    assert parse_error(f"[api_identity]\nalt_names = [{names}]\n") == (
        "owner.toml:2: [api_identity] alt_names: at most 100 entries allowed, got 101"
    )


# --- [audit_log] sink and url --------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        'sink = "network"\nurl = "https://audit.example/log"',
        'sink = "network"\nurl = "https://audit.example:6514/log?stream=cas"',
        'sink = "network"\nurl = "https://[2001:db8::1]:6514/log"',
        'mode = "unsigned"',
        'mode = "signed"\nsink = "file"',
    ],
)
def test_valid_audit_log_settings(body: str) -> None:
    parse_owner_config(f"[audit_log]\n{body}\n", "o.toml", "toml")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('sink = "network"', 'owner.toml:1: [audit_log] url: required when sink = "network"'),
        (
            'url = "https://audit.example"',
            'owner.toml:2: [audit_log] url: only allowed with sink = "network" (sink is "file")',
        ),
        (
            'sink = "file"\nurl = "https://audit.example"',
            'owner.toml:3: [audit_log] url: only allowed with sink = "network" (sink is "file")',
        ),
        (
            'sink = "network"\nurl = "tcp+tls://audit.example:6514"',
            "owner.toml:3: [audit_log] url: expected a URL starting with https://",
        ),
        (
            'sink = "network"\nurl = "http://audit.example/log"',
            "owner.toml:3: [audit_log] url: plain http:// is refused: the connection must be "
            "encrypted and authenticated; use https://",
        ),
        (
            'sink = "network"\nurl = "https://audit.example/#frag"',
            "owner.toml:3: [audit_log] url: a URL may not carry a fragment ('#...')",
        ),
    ],
)
def test_audit_log_sink_and_url_must_agree(body: str, expected: str) -> None:
    assert parse_error(f"[audit_log]\n{body}\n") == expected


def test_keep_evidence_is_a_boolean_in_the_normal_form_only_when_true() -> None:
    kept = parse_owner_config("[audit_log]\nkeep_evidence = true\n", "o.toml", "toml").config
    off = parse_owner_config("[audit_log]\nkeep_evidence = false\n", "o.toml", "toml").config
    unset = parse_owner_config("", "o.toml", "toml").config
    assert kept.audit_log.keeps_evidence
    assert kept.normal_form()["audit_log"]["keep_evidence"] is True
    assert not off.audit_log.keeps_evidence
    # Saying false changes nothing: the config keeps the hash it had before the key existed.
    assert (
        off.normal_form()
        == unset.normal_form()
        == {"audit_log": {"mode": "signed", "sink": "file"}}
    )
    assert parse_error('[audit_log]\nkeep_evidence = "yes"\n') == (
        'owner.toml:2: [audit_log] keep_evidence: expected true or false, got string "yes"'
    )


def test_server_ca_certificate_only_with_a_network_sink() -> None:
    data = {"audit_log": {"server_ca_certificate": CA_PEM}}

    assert parse_error(json.dumps(data, indent=1), "json", "o.json") == (
        'o.json:3: [audit_log] server_ca_certificate: only allowed with sink = "network" '
        '(sink is "file")'
    )


PRIVATE_KEY_PEM = (
    ec.generate_private_key(ec.SECP256R1())
    .private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    .decode("ascii")
)


@pytest.mark.parametrize(
    ("pem", "reason"),
    [
        ("hello", "not PEM: no '-----BEGIN CERTIFICATE-----' line"),
        (
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
            "the PEM block does not hold a valid X.509 certificate",
        ),
        (CA_PEM + CA_PEM, "expected exactly one PEM block (one certificate), found 2"),
        (PRIVATE_KEY_PEM, "the PEM block is a PRIVATE KEY, not a CERTIFICATE"),
        (CA_PEM + PRIVATE_KEY_PEM, "expected exactly one PEM block (one certificate), found 2"),
    ],
)
def test_bad_server_ca_certificate(pem: str, reason: str) -> None:
    data = {"sink": "network", "url": "https://audit.example", "server_ca_certificate": pem}

    message = parse_error(json.dumps({"audit_log": data}), "json", "o.json")

    assert message == f"o.json:1: [audit_log] server_ca_certificate: {reason}"
    assert "PRIVATE KEY-----\n" not in message


# --- parse errors in each format -----------------------------------------------------------------


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"

    assert load_error(path) == f"{path}: configuration file not found"


def test_toml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "owner.toml", "[dcap]\npccs_url = https://x\n")

    assert load_error(path).startswith(f"{path}:2:12: invalid TOML: ")


def test_yaml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "owner.yaml", "dcap:\n  pccs_url: 'https://x\n")

    assert load_error(path).startswith(f"{path}:3:1: invalid YAML: ")


def test_yaml_control_character_names_its_line() -> None:
    assert parse_error("dcap:\n  pccs_url: \x01\n", "yaml", "o.yaml") == (
        "o.yaml:2:13: invalid YAML: special characters are not allowed (#x0001)"
    )


def test_yaml_duplicate_key_is_refused_at_its_line() -> None:
    message = parse_error(
        f"dcap:\n  subscription_key: {SUBSCRIPTION_KEY}\n  subscription_key: other-secret\n",
        "yaml",
        "o.yaml",
    )

    assert message == "o.yaml:3: [dcap] subscription_key: duplicate key (first written on line 2)"


def test_yaml_aliases_are_refused() -> None:
    message = parse_error(
        "api_identity:\n  alt_names: &names [a.example]\nias:\n  spid: *names\n", "yaml", "o.yaml"
    )

    assert message == (
        "o.yaml:2: [api_identity] alt_names: YAML anchors (&name) are not supported here; "
        "write the value out\n"
        "o.yaml:4: [ias] spid: YAML aliases (*name) are not supported here; write the value out"
    )


def test_yaml_unknown_tags_are_refused() -> None:
    message = parse_error("dcap: !!python/object:os.system {}\n", "yaml", "o.yaml")

    assert message.startswith("o.yaml:1:7: invalid YAML: could not determine a constructor")


def test_yaml_keys_must_be_strings() -> None:
    assert parse_error("api_identity:\n  1: x\n", "yaml", "o.yaml") == (
        "o.yaml:2: [api_identity]: keys must be strings, got integer 1"
    )


@pytest.mark.parametrize(
    ("text", "fmt", "expected"),
    [
        ("- a\n- b\n", "yaml", "o: expected a table of sections, got an array"),
        ('"owner"', "json", 'o: expected a table of sections, got string "owner"'),
        ("null", "json", "o: expected a table of sections, got NoneType"),
    ],
)
def test_top_level_must_be_a_table(text: str, fmt: OwnerConfigFormat, expected: str) -> None:
    assert parse_error(text, fmt, "o") == expected


def test_json_duplicate_key_is_refused() -> None:
    message = parse_error(
        '{"dcap": {\n "pccs_url": "https://a",\n "pccs_url": "https://b"}}', "json", "o.json"
    )

    assert message == "o.json:3: [dcap] pccs_url: duplicate key (first written on line 2)"


def test_json_nan_is_refused() -> None:
    assert parse_error('{"ias": {"linkable_quotes": NaN}}', "json", "o.json") == (
        "o.json: invalid JSON: NaN is not a JSON number"
    )


def test_json_syntax_error_names_line_and_column() -> None:
    assert parse_error('{\n  "dcap": }', "json", "o.json").startswith("o.json:2:11: invalid JSON")


@pytest.mark.parametrize("fmt", ["toml", "json", "yaml"])
def test_deep_nesting_is_a_config_error(fmt: OwnerConfigFormat) -> None:
    text = {"toml": "a = " + "[" * 5000, "json": "[" * 5000, "yaml": "[" * 5000}[fmt]

    assert "nested too deeply" in parse_error(text, fmt, "o")


# --- secrets -------------------------------------------------------------------------------------


def full_config() -> OwnerConfig:
    return parse_owner_config(
        FULL_TOML + IAS_SECTION.format(sp_key=SP_KEY), "owner.toml", "toml"
    ).config


def test_redacted_form_hides_every_secret() -> None:
    config = full_config()

    redacted = config.redacted()

    assert redacted["dcap"]["subscription_key"] == REDACTED
    assert redacted["ias"]["sp_key"] == REDACTED
    shown = json.dumps(redacted)
    assert SUBSCRIPTION_KEY not in shown
    assert SP_KEY not in shown
    normal = config.normal_form()
    normal["dcap"]["subscription_key"] = normal["ias"]["sp_key"] = REDACTED
    assert redacted == normal


def test_repr_and_str_never_show_a_secret() -> None:
    config = full_config()

    for text in (repr(config), str(config), repr(config.dcap), str(config.ias), f"{config}"):
        assert SUBSCRIPTION_KEY not in text
        assert SP_KEY not in text


def test_normal_form_reveals_the_secrets() -> None:
    normal = full_config().normal_form()

    assert normal["dcap"]["subscription_key"] == SUBSCRIPTION_KEY
    assert normal["ias"]["sp_key"] == SP_KEY


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ('"' + "k" * 300 + '"', "at most 256 characters allowed, got 300"),
        ('""', "at least 1 character required, got 0"),
        ('" padded-secret-value "', "has leading or trailing whitespace"),
        (
            '"line\\nbreak-secret-value"',
            "contains a control character (such as a newline or a tab)",
        ),
        ("123456789012345", "expected a string, got an integer (not shown: a secret)"),
        ('["array-secret-value"]', "expected a string, got an array (not shown: a secret)"),
    ],
)
def test_errors_about_a_secret_never_show_it(value: str, reason: str) -> None:
    message = parse_error(f"[dcap]\nsubscription_key = {value}\n")

    assert message == f"owner.toml:2: [dcap] subscription_key: {reason}"
    for fragment in (
        "kkkkkkkk",
        "padded-secret",
        "break-secret",
        "123456789012345",
        "array-secret",
    ):
        assert fragment not in message


def test_a_misspelled_secret_key_is_unknown_and_not_shown() -> None:
    message = parse_error(f'[dcap]\nsubscription_keys = "{SUBSCRIPTION_KEY}"\n')

    assert message == (
        "owner.toml:2: [dcap] subscription_keys: unknown key; "
        "expected one of: pccs_url, subscription_key"
    )


def test_secret_errors_are_not_chained_to_the_validation_error() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_owner_config(f'[ias]\nsp_key = " {SP_KEY}"\n', "o.toml", "toml")

    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_yaml_duplicate_secret_is_not_echoed_by_the_yaml_parser() -> None:
    # A duplicate key in an unknown position reaches ruamel's own check, whose text quotes both
    # values; the loader must not pass that on.
    text = f"? [x]\n: {SP_KEY}\n? [x]\n: {SUBSCRIPTION_KEY}\n"

    message = parse_error(text, "yaml", "o.yaml")

    assert SP_KEY not in message
    assert SUBSCRIPTION_KEY not in message


# --- the normal form -----------------------------------------------------------------------------


def test_normal_form_round_trips_with_the_same_hash() -> None:
    config = full_config()

    again = owner_config_from_normal_form(json.loads(json.dumps(config.normal_form())))

    assert again == config
    assert again.normal_form() == config.normal_form()
    assert owner_config_sha256(again) == owner_config_sha256(config)
    assert hash(again) == hash(config)


def test_hash_is_sha256_of_the_canonical_json() -> None:
    canonical = b'{"audit_log":{"mode":"signed","sink":"file"}}'

    assert owner_config_sha256(OwnerConfig()) == hashlib.sha256(canonical).hexdigest()


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("api_identity", "common_name", "cas2.example.com"),
        ("api_identity", "alt_names", ["10.0.0.1", "cas.example.com", "::1"]),
        ("api_identity", "country_name", "AT"),
        ("api_identity", "email", "other@example.com"),
        ("dcap", "subscription_key", "1" + SUBSCRIPTION_KEY[1:]),
        ("dcap", "pccs_url", "https://pccs.example.com:8082/sgx/certification/v4/"),
        ("audit_log", "mode", "unsigned"),
        ("audit_log", "url", "https://audit.example.com/"),
        ("audit_log", "server_ca_certificate", make_certificate_pem("other CA")),
    ],
)
def test_any_change_of_a_value_changes_the_hash(section: str, key: str, value: object) -> None:
    changed = json.loads(json.dumps(FULL_DATA))
    changed[section][key] = value

    before = owner_config_from_normal_form(FULL_DATA)
    after = owner_config_from_normal_form(changed)

    assert owner_config_sha256(after) != owner_config_sha256(before)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"api": {"identity": {}}},
            "request body: [api]: unknown section; expected one of: "
            "api_identity, audit_log, dcap, ias, recovery",
        ),
        (
            {"dcap": {"pccs_url": None}},
            "request body: [dcap] pccs_url: null is not a value; leave the key out instead",
        ),
        (
            {"api_identity": {"alt_names": "x"}},
            'request body: [api_identity] alt_names: expected an array, got string "x"',
        ),
        (
            {"audit_log": {"sink": "network"}},
            'request body: [audit_log] url: required when sink = "network"',
        ),
    ],
)
def test_normal_form_parser_is_strict(body: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        owner_config_from_normal_form(body)

    assert caught.value.message == expected


def test_normal_form_parser_refuses_what_is_not_an_object() -> None:
    with pytest.raises(
        ConfigError, match=r"^request body: expected a table of sections, got an array$"
    ):
        owner_config_from_normal_form([])


def test_normal_form_parser_names_the_given_source() -> None:
    with pytest.raises(ConfigError, match=r"^stored record: \[dcap\] colour: unknown key"):
        owner_config_from_normal_form({"dcap": {"colour": "blue"}}, source="stored record")


# --- arbitrary input only ever gives a ConfigError ------------------------------------------------

KNOWN_KEYS = [
    "api",
    "identity",
    "api_identity",
    "common_name",
    "alt_names",
    "country_name",
    "org_name",
    "state_or_province",
    "locality",
    "email",
    "dcap",
    "pccs_url",
    "subscription_key",
    "audit_log",
    "mode",
    "sink",
    "url",
    "server_ca_certificate",
    "ias",
    "spid",
    "linkable_quotes",
    "sp_key",
    "base_uri",
]
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["DE", "https://a.example", "network", "signed", "cas.example", "::1"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KNOWN_KEYS) | st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)


@pytest.mark.parametrize("fmt", ["toml", "json", "yaml"])
@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200))
def test_arbitrary_text_only_ever_raises_config_error(fmt: OwnerConfigFormat, text: str) -> None:
    with contextlib.suppress(ConfigError):
        parse_owner_config(text, "fuzz", fmt)


@settings(max_examples=300, deadline=None)
@given(data=st.dictionaries(st.sampled_from(KNOWN_KEYS), JSON_VALUES, max_size=4))
def test_arbitrary_structures_validate_or_raise_config_error(data: dict[str, Any]) -> None:
    try:
        loaded = parse_owner_config(json.dumps(data), "fuzz", "json")
    except ConfigError:
        return
    config = loaded.config
    again = owner_config_from_normal_form(config.normal_form())
    assert again == config
    assert owner_config_sha256(again) == owner_config_sha256(config)


def test_scone_ias_base_url_and_identity_are_accepted_with_the_warning() -> None:
    loaded = parse_owner_config(
        '[ias]\nbase_url = "https://ias.example/attestation/v4"\nidentity = "my-ias-client"\n',
        "owner.toml",
        "toml",
    )

    assert loaded.warnings == (f"owner.toml:1: {IAS_END_OF_LIFE}",)
    assert loaded.config.ias is not None
    assert loaded.config.ias.base_url == "https://ias.example/attestation/v4"
    assert loaded.config.ias.identity == "my-ias-client"
    rewritten = owner_config_from_normal_form(json.loads(json.dumps(loaded.config.normal_form())))
    assert rewritten == loaded.config


# --- [recovery] ---------------------------------------------------------------------------------


def _recovery_key() -> str:
    key = x25519.X25519PrivateKey.generate().public_key()
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode("ascii")


def _recovery(keys: list[str], threshold: int) -> str:
    listed = ", ".join(f'"{key}"' for key in keys)
    return f"[recovery]\nkeys = [{listed}]\nthreshold = {threshold}\n"


def test_recovery_keys_and_threshold_load_and_are_hashed() -> None:
    keys = [_recovery_key(), _recovery_key(), _recovery_key()]
    config = parse_owner_config(_recovery(keys, 2), "owner.toml", "toml").config
    assert config.recovery is not None
    assert config.recovery.threshold == 2
    assert len(set(config.recovery.key_hashes())) == 3
    assert config.normal_form()["recovery"] == {"keys": keys, "threshold": 2}
    other = parse_owner_config(_recovery(keys, 3), "owner.toml", "toml").config
    assert owner_config_sha256(other) != owner_config_sha256(config)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("keys = [{a}, {a}]\nthreshold = 1", "owner.toml:2: [recovery] keys: '"),
        ("keys = [{a}, {b}]\nthreshold = 3", "owner.toml:3: [recovery] threshold: 3 shares"),
        ("keys = [{a}]\nthreshold = 0", "owner.toml:3: [recovery] threshold:"),
        ("keys = []\nthreshold = 1", "owner.toml:2: [recovery] keys: at least 1"),
        ('keys = [{a}, "AAAA"]\nthreshold = 1', "owner.toml:2: [recovery] keys[1]: not a recovery"),
        (
            'keys = [{a}, "not base64!"]\nthreshold = 1',
            "owner.toml:2: [recovery] keys[1]: not standard",
        ),
        ("keys = [{a}]", "owner.toml:1: [recovery] threshold:"),
    ],
)
def test_bad_recovery_configs_name_the_line_and_key(body: str, expected: str) -> None:
    a, b = f'"{_recovery_key()}"', f'"{_recovery_key()}"'
    message = parse_error("[recovery]\n" + body.format(a=a, b=b) + "\n")
    assert expected in message


def test_a_p256_key_is_not_a_recovery_key() -> None:
    der = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    key = base64.b64encode(der).decode("ascii")
    assert "keys[0]: not a recovery key: a recovery key must be an X25519" in parse_error(
        _recovery([key], 1)
    )


def test_more_recovery_keys_than_the_limit_are_refused() -> None:
    keys = [_recovery_key() for _ in range(17)]
    assert "[recovery] keys: at most 16" in parse_error(_recovery(keys, 2))
