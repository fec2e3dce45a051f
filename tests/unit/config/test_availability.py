"""The availability config: loading, defaults, path resolution and errors that point at the line."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from opencas.config.availability import (
    AvailabilityConfig,
    CollateralSettings,
    ConnectionLimits,
    ListenAddress,
    ReplayCacheLimits,
    SessionLimits,
    default_availability_config,
    load_availability_config,
    parse_listen_address,
)
from opencas.errors import ConfigError
from opencas.platform.choice import PlatformSettings

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "cas.toml"

MINIMAL = """\
[database]
path = "cas.db"

[platform]
kind = "simulated"
"""


def write_config(directory: Path, text: str, name: str = "cas.toml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_availability_config(path)
    return caught.value.message


def with_api(api_lines: str) -> str:
    return MINIMAL + "\n[api]\n" + api_lines + "\n"


# --- valid files ---------------------------------------------------------------------------------


def test_minimal_file_loads_with_every_default(tmp_path: Path) -> None:
    path = write_config(tmp_path, MINIMAL)

    config = load_availability_config(path)

    assert config == AvailabilityConfig(
        source=path,
        database_path=tmp_path / "cas.db",
        api_listen=ListenAddress("127.0.0.1", 8081),
        enclave_listen=ListenAddress("127.0.0.1", 18765),
        hostnames=("localhost", "127.0.0.1", "::1"),
        platform=PlatformSettings(
            kind="simulated",
            simulated_key_file=tmp_path / "simulated-platform.key",
            tsm_key_file=tmp_path / "tsm-platform.key",
            gramine_attestation_dir=Path("/dev/attestation"),
            tsm_report_dir=Path("/sys/kernel/config/tsm/report"),
        ),
        collateral=CollateralSettings(cache_directory=tmp_path / "collateral-cache"),
        audit_log_path=tmp_path / "audit.log",
    )


def test_every_key_set(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """\
[database]
path = "/var/lib/opencas/cas.db"

[api]
api_listen = "0.0.0.0:9000"
enclave_listen = "[::]:9001"
hostnames = ["CAS.Example.com", "10.0.0.1", "0:0:0:0:0:0:0:1"]

[platform]
kind = "simulated"
key_file = "/etc/opencas/platform.key"
""",
    )

    config = load_availability_config(path)

    assert config.database_path == Path("/var/lib/opencas/cas.db")
    assert config.api_listen == ListenAddress("0.0.0.0", 9000)
    assert config.enclave_listen == ListenAddress("::", 9001)
    assert config.hostnames == ("cas.example.com", "10.0.0.1", "::1")
    assert config.platform_key_file == Path("/etc/opencas/platform.key")


def test_relative_paths_resolve_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    write_config(
        config_dir,
        """\
[database]
path = "../data/cas.db"

[platform]
kind = "simulated"
key_file = "keys/platform.key"
""",
    )
    monkeypatch.chdir(tmp_path)

    config = load_availability_config(Path("etc/cas.toml"))

    assert config.source == config_dir / "cas.toml"
    assert config.database_path == config_dir / "../data/cas.db"
    assert config.platform_key_file == config_dir / "keys/platform.key"


def test_default_key_file_sits_beside_the_database(tmp_path: Path) -> None:
    path = write_config(tmp_path, MINIMAL.replace('"cas.db"', '"state/cas.db"'))

    config = load_availability_config(path)

    assert config.platform_key_file == tmp_path / "state" / "simulated-platform.key"


def test_machine_dir_holds_the_simulated_platform_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, MINIMAL + 'machine_dir = "machines/backup"\n')

    config = load_availability_config(path)

    assert config.platform_key_file == tmp_path / "machines" / "backup" / "platform.key"


def test_a_simulated_machine_has_the_security_version_its_operator_gives_it(
    tmp_path: Path,
) -> None:
    assert (
        load_availability_config(
            write_config(tmp_path, MINIMAL)
        ).platform.simulated_security_version
        == 0
    )
    path = write_config(tmp_path, MINIMAL + "simulated_security_version = 2\n")
    assert load_availability_config(path).platform.simulated_security_version == 2

    path = write_config(tmp_path, MINIMAL + "simulated_security_version = 65536\n")
    assert f"{path}:6: [platform] simulated_security_version:" in config_error(path)


def test_a_simulated_machine_seals_as_its_operator_says(tmp_path: Path) -> None:
    default = load_availability_config(write_config(tmp_path, MINIMAL))
    assert default.platform.simulated_sealing == "machine"
    path = write_config(tmp_path, MINIMAL + 'simulated_sealing = "measurement"\n')
    assert load_availability_config(path).platform.simulated_sealing == "measurement"

    path = write_config(tmp_path, MINIMAL + 'simulated_sealing = "mrenclave"\n')
    message = config_error(path)
    assert f"{path}:6: [platform] simulated_sealing:" in message
    assert "'machine' or 'measurement'" in message


def test_machine_dir_and_key_file_together_are_refused_with_the_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, MINIMAL + 'key_file = "a.key"\nmachine_dir = "machines/a"\n')

    message = config_error(path)

    assert f"{path}:7: [platform] machine_dir:" in message
    assert "write only one" in message


def test_inline_tables_and_dotted_keys_are_plain_toml(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        'database = { path = "cas.db" }\nplatform.kind = "simulated"\n',
    )

    assert load_availability_config(path).database_path == tmp_path / "cas.db"


# --- errors: each names the file, the key and the line -------------------------------------------


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"

    assert config_error(path) == f"{path}: configuration file not found"


def test_toml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, '[database]\npath = "cas.db"\n[api]\napi_listen = 127.0.0.1:8081\n'
    )

    message = config_error(path)

    assert message.startswith(f"{path}:4:19: invalid TOML: ")


def test_duplicate_key_is_a_syntax_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, MINIMAL + 'kind = "simulated"\n')

    assert config_error(path).startswith(f"{path}:6:")


def test_unknown_section(tmp_path: Path) -> None:
    path = write_config(tmp_path, MINIMAL + "\n[databse]\npath = 'x'\n")

    assert config_error(path) == (
        f"{path}:7: [databse]: unknown section; expected one of: "
        "api, audit_log, backup, collateral, database, limits, platform"
    )


def test_unknown_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, with_api('api_listen = "127.0.0.1:8081"\napi_port = 8081'))

    assert config_error(path) == (
        f"{path}:9: [api] api_port: unknown key; "
        "expected one of: api_listen, enclave_listen, hostnames"
    )


def test_unknown_dotted_key_inside_a_section_is_a_key_of_that_section(tmp_path: Path) -> None:
    path = write_config(tmp_path, with_api("tls.cert = 'x'"))

    assert config_error(path).startswith(f"{path}:8: [api] tls: unknown key; expected one of:")


def test_wrong_type_names_expected_type_and_value(tmp_path: Path) -> None:
    path = write_config(tmp_path, with_api("api_listen = 8081"))

    assert config_error(path) == (
        f"{path}:8: [api] api_listen: expected a string, got integer 8081"
    )


def test_section_given_as_a_value(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'api = "127.0.0.1:8081"\n' + MINIMAL)

    assert config_error(path) == f'{path}:1: [api]: expected a table, got string "127.0.0.1:8081"'


def test_bad_address(tmp_path: Path) -> None:
    path = write_config(tmp_path, with_api('enclave_listen = "enclave.local"'))

    assert config_error(path) == (
        f"{path}:8: [api] enclave_listen: invalid address 'enclave.local': "
        "no port; expected HOST:PORT, such as 127.0.0.1:8081 or [::1]:8081"
    )


def test_port_out_of_range(tmp_path: Path) -> None:
    path = write_config(tmp_path, with_api('api_listen = "127.0.0.1:65536"'))

    assert config_error(path) == (
        f"{path}:8: [api] api_listen: invalid address '127.0.0.1:65536': "
        "port 65536 is out of range 1-65535"
    )


def test_bad_hostname_points_at_its_line_in_the_array(tmp_path: Path) -> None:
    path = write_config(tmp_path, with_api('hostnames = [\n  "localhost",\n  "cas_1.local",\n]'))

    message = config_error(path)

    assert message.startswith(f"{path}:10: [api] hostnames[1]: 'cas_1.local' is neither")


def test_too_many_hostnames(tmp_path: Path) -> None:
    names = ", ".join(f'"h{i}.example"' for i in range(101))
    path = write_config(tmp_path, with_api(f"hostnames = [{names}]"))

    assert config_error(path) == f"{path}:8: [api] hostnames: at most 100 entries allowed, got 101"


def test_duplicate_hostname(tmp_path: Path) -> None:
    path = write_config(tmp_path, with_api('hostnames = ["localhost", "LOCALHOST"]'))

    assert config_error(path) == f"{path}:8: [api] hostnames: 'localhost' is listed twice"


def test_tee_platform_settings_are_read_relative_to_the_file(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        MINIMAL.replace('"simulated"', '"tsm"')
        + 'tsm_key_file = "vm-disk/tsm.key"\ngramine_attestation_dir = "fake/attestation"\n'
        + 'tsm_report_dir = "/run/tsm"\ntsm_privlevel = 2\n',
    )

    settings = load_availability_config(path).platform

    assert settings.kind == "tsm"
    assert settings.tsm_key_file == tmp_path / "vm-disk/tsm.key"
    assert settings.gramine_attestation_dir == tmp_path / "fake/attestation"
    assert settings.tsm_report_dir == Path("/run/tsm")
    assert settings.tsm_privlevel == 2


@pytest.mark.parametrize("value", ["-1", "4", '"0"'])
def test_tsm_privlevel_is_a_vmpl(tmp_path: Path, value: str) -> None:
    path = write_config(tmp_path, MINIMAL + f"tsm_privlevel = {value}\n")

    assert config_error(path).startswith(f"{path}:6: [platform] tsm_privlevel: ")


def test_unknown_platform_kind_lists_known_kinds(tmp_path: Path) -> None:
    path = write_config(tmp_path, MINIMAL.replace('"simulated"', '"sgx"'))

    assert config_error(path) == (
        f"{path}:5: [platform] kind: unknown platform kind 'sgx'; known kinds: auto, "
        "gramine-sgx, simulated, tsm"
    )


def test_same_listen_address_twice(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, with_api('api_listen = "127.0.0.1:9000"\nenclave_listen = "127.0.0.1:9000"')
    )

    assert config_error(path) == (
        f"{path}:9: [api] enclave_listen: same address as api_listen (127.0.0.1:9000); "
        "the two listeners need different addresses"
    )


def test_api_listen_on_the_default_enclave_address(tmp_path: Path) -> None:
    path = write_config(tmp_path, with_api('api_listen = "127.0.0.1:18765"'))

    # enclave_listen is not written, so the error points at its section.
    assert config_error(path).startswith(f"{path}:7: [api] enclave_listen: same address as")


def test_wildcard_listener_overlaps_a_specific_one_on_the_same_port(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, with_api('api_listen = "0.0.0.0:9000"\nenclave_listen = "127.0.0.1:9000"')
    )

    assert "[api] enclave_listen: 127.0.0.1:9000 overlaps api_listen" in config_error(path)


def test_missing_database_section_is_named(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[platform]\nkind = "simulated"\n')

    assert config_error(path) == f"{path}: [database]: required section is missing"


def test_missing_key_points_at_its_section(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[database]\n\n[platform]\nkind = "simulated"\n')

    assert config_error(path) == f"{path}:1: [database] path: required key is missing"


def test_without_a_platform_section_the_platform_is_found(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[database]\npath = "cas.db"\n')

    config = load_availability_config(path)

    assert config.platform_kind == "auto"
    assert config.platform_key_file == tmp_path / "simulated-platform.key"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ('""', "empty path"),
        ('"~/cas.db"', "'~' is not expanded"),
    ],
)
def test_bad_database_path(tmp_path: Path, value: str, reason: str) -> None:
    path = write_config(tmp_path, f"[database]\npath = {value}\n[platform]\nkind = 'simulated'\n")

    assert config_error(path).startswith(f"{path}:2: [database] path: ")
    assert reason in config_error(path)


def test_every_problem_is_reported_once_in_line_order(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """\
[platform]
kind = "sev"

[database]
path = 3

[api]
api_listen = "localhost"
colour = "blue"
""",
    )

    lines = config_error(path).splitlines()

    assert [line.split(": ")[0:2] for line in lines] == [
        [f"{path}:2", "[platform] kind"],
        [f"{path}:5", "[database] path"],
        [f"{path}:8", "[api] api_listen"],
        [f"{path}:9", "[api] colour"],
    ]


# --- limits -------------------------------------------------------------------------------------


def test_limits_are_read(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        MINIMAL
        + "\n[limits]\nmax_connections = 20\nmax_connections_per_source = 5\n"
        + "tls_handshake_timeout = 2\nrequest_header_timeout = 0.5\nkeep_alive_timeout = 3\n"
        + "replay_cache_entries = 100\nreplay_cache_entries_per_identity = 10\n"
        + "replay_cache_identities = 7\n",
    )

    config = load_availability_config(path)

    assert config.connection_limits == ConnectionLimits(
        max_connections=20,
        max_connections_per_source=5,
        tls_handshake_timeout=2.0,
        request_header_timeout=0.5,
        keep_alive_timeout=3,
    )
    assert config.replay_cache_limits == ReplayCacheLimits(
        entries=100, entries_per_identity=10, identities=7
    )


def test_session_limits_are_read(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        MINIMAL
        + "\n[limits]\nmax_session_bytes = 1000\nmax_placeholders_per_session = 2\n"
        + "max_secrets_per_session = 3\nmax_rsa_keys_per_session = 0\n"
        + "max_rendered_config_bytes = 5000\nsession_uploads_per_minute = 6\n"
        + "session_upload_burst = 7\nsession_upload_identities = 8\n",
    )

    assert load_availability_config(path).session_limits == SessionLimits(
        max_session_bytes=1000,
        max_placeholders_per_session=2,
        max_secrets_per_session=3,
        max_rsa_keys_per_session=0,
        max_rendered_config_bytes=5000,
        session_uploads_per_minute=6,
        session_upload_burst=7,
        session_upload_identities=8,
    )


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        ("max_connections = 0", "greater than or equal to 1"),
        ("request_header_timeout = 0", "greater than 0"),
        ("keep_alive_timeout = 1.5", "integer"),
        ("max_connections = 10\nmax_connections_per_source = 11", "more than max_connections"),
        (
            "replay_cache_entries = 10\nreplay_cache_entries_per_identity = 11",
            "more than replay_cache_entries",
        ),
        ("unknown_limit = 1", "unknown_limit"),
        ("max_session_bytes = 1048577", "less than or equal to 1048576"),
        ("max_rsa_keys_per_session = -1", "greater than or equal to 0"),
        ("session_upload_burst = 0", "greater than or equal to 1"),
        ("upgrade_answer_timeout = 0", "upgrade_answer_timeout"),
        ("upgrade_wait = 86401", "less than or equal to 86400"),
    ],
)
def test_bad_limits_are_named(tmp_path: Path, lines: str, reason: str) -> None:
    message = config_error(write_config(tmp_path, MINIMAL + "\n[limits]\n" + lines + "\n"))
    assert "limits" in message
    assert reason in message


# --- collateral -----------------------------------------------------------------------------------


def test_collateral_paths_are_resolved_against_the_file(tmp_path: Path) -> None:
    text = MINIMAL + (
        '\n[collateral]\nbundle = "bundle"\ncache_directory = "/var/cache/cas"\n'
        'fetch = false\nca_certificates = "pccs.pem"\namd_kds_url = "https://kds.example/"\n'
        "fetch_timeout = 2.5\n"
    )
    settings = load_availability_config(write_config(tmp_path, text)).collateral
    assert settings == CollateralSettings(
        bundle=tmp_path / "bundle",
        cache_directory=Path("/var/cache/cas"),
        fetch=False,
        amd_kds_url="https://kds.example",
        ca_certificates=tmp_path / "pccs.pem",
        fetch_timeout=2.5,
    )


def test_simulated_collateral_roots_are_key_hashes(tmp_path: Path) -> None:
    text = MINIMAL + f'\n[collateral]\nsimulated_roots = ["{"ab" * 32}", "{"cd" * 32}"]\n'
    settings = load_availability_config(write_config(tmp_path, text)).collateral
    assert settings.simulated_roots == frozenset({"ab" * 32, "cd" * 32})


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        ('amd_kds_url = "http://kdsintf.amd.com"', "is not an https:// URL"),
        ("fetch_timeout = 0", "greater than 0"),
        ('bundle = "~/bundle"', "'~' is not expanded"),
        ('fetch = "no"', "expected true or false"),
        ("pccs_url = 1", "unknown key"),
        ('simulated_roots = ["AB"]', "simulated_roots[0]: a key hash is 64 lowercase hex digits"),
        ('simulated_roots = "ab"', "expected an array"),
    ],
)
def test_bad_collateral_settings_are_named(tmp_path: Path, lines: str, reason: str) -> None:
    message = config_error(write_config(tmp_path, MINIMAL + "\n[collateral]\n" + lines + "\n"))
    assert "[collateral]" in message
    assert reason in message


# --- the default text and the example ------------------------------------------------------------


def test_default_text_loads_and_sets_every_key(tmp_path: Path) -> None:
    text = default_availability_config()
    path = write_config(tmp_path, text)

    config = load_availability_config(path)

    assert config.database_path == tmp_path / ".cas" / "cas.db"
    assert config.platform_key_file == tmp_path / ".cas" / "simulated-platform.key"
    assert config.platform_kind == "simulated"
    assert tomllib.loads(text) == {
        "database": {"path": ".cas/cas.db"},
        "audit_log": {"path": ".cas/audit.log"},
        "api": {
            "api_listen": "127.0.0.1:8081",
            "enclave_listen": "127.0.0.1:18765",
            "hostnames": ["localhost", "127.0.0.1", "::1"],
        },
        "platform": {
            "kind": "simulated",
            "key_file": ".cas/simulated-platform.key",
            "tsm_key_file": ".cas/tsm-platform.key",
            "gramine_attestation_dir": "/dev/attestation",
            "tsm_report_dir": "/sys/kernel/config/tsm/report",
        },
        "limits": {
            "max_connections": 1000,
            "max_connections_per_source": 250,
            "tls_handshake_timeout": 10.0,
            "request_header_timeout": 10.0,
            "keep_alive_timeout": 75,
            "replay_cache_entries": 100_000,
            "replay_cache_entries_per_identity": 5_000,
            "replay_cache_identities": 10_000,
            "max_session_bytes": 262_144,
            "max_placeholders_per_session": 1000,
            "max_secrets_per_session": 100,
            "max_rsa_keys_per_session": 4,
            "max_rendered_config_bytes": 4_194_304,
            "session_uploads_per_minute": 30,
            "session_upload_burst": 30,
            "session_upload_identities": 10_000,
            "otp_refusals_per_service": 5,
            "otp_refusal_window": 300.0,
            "key_rollover_batch": 1000,
            "key_rollover_pause": 0.0,
            "upgrade_answer_timeout": 60.0,
            "upgrade_wait": 600.0,
        },
        "collateral": {
            "fetch": True,
            "amd_kds_url": "https://kdsintf.amd.com",
            "fetch_timeout": 10.0,
        },
        "backup": {},
    }
    assert config.collateral == CollateralSettings(
        cache_directory=tmp_path / ".cas" / "collateral-cache"
    )
    assert config.connection_limits == ConnectionLimits()
    assert config.replay_cache_limits == ReplayCacheLimits()
    assert config.session_limits == SessionLimits()


def test_default_text_quotes_the_database_path(tmp_path: Path) -> None:
    odd = 'my "state"\\cas\t.db'
    path = write_config(tmp_path, default_availability_config(odd))

    assert load_availability_config(path).database_path == tmp_path / odd


def test_example_file_loads_and_has_the_default_shape() -> None:
    config = load_availability_config(EXAMPLE)

    assert config.platform_kind == "simulated"
    example = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    default = tomllib.loads(default_availability_config())
    assert {section: sorted(keys) for section, keys in example.items()} == {
        section: sorted(keys) for section, keys in default.items()
    }


# --- listen addresses ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected", "shown"),
    [
        ("127.0.0.1:8081", ListenAddress("127.0.0.1", 8081), "127.0.0.1:8081"),
        ("[::1]:443", ListenAddress("::1", 443), "[::1]:443"),
        ("[0:0::0:1]:1", ListenAddress("::1", 1), "[::1]:1"),
        ("CAS.example:65535", ListenAddress("cas.example", 65535), "cas.example:65535"),
    ],
)
def test_parse_listen_address(text: str, expected: ListenAddress, shown: str) -> None:
    address = parse_listen_address(text)

    assert address == expected
    assert str(address) == shown


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "no port"),
        ("localhost", "no port"),
        ("localhost:", "no port"),
        (":8081", "no host"),
        ("::1:8081", "write IPv6 addresses in brackets, as in [::1]:8081"),
        ("[::1]8081", "no port after ']'"),
        ("[::1:8081", "missing ']'"),
        ("[127.0.0.1]:80", "is not an IPv6 address"),
        ("localhost:http", "port 'http' is not a number"),
        ("localhost:0", "port 0 is out of range 1-65535"),
        ("localhost:123456", "port 123456 is out of range 1-65535"),
        ("localhost:+80", "is not a number"),
        ("bad_host:80", "letters, digits and hyphens"),
        ("-cas:80", "may not start or end with a hyphen"),
        ("cas..local:80", "empty label"),
        ("300.1.1.1:80", "looks like an IPv4 address"),
        ("bücher.example:80", "punycode"),
        (f"{'a' * 64}.example:80", "longer than 63 characters"),
    ],
)
def test_parse_listen_address_rejects(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match="invalid address") as caught:
        parse_listen_address(text)

    assert reason in str(caught.value)
    assert repr(text) in str(caught.value)


def test_pathological_toml_is_a_config_error(tmp_path: Path) -> None:
    deep = tmp_path / "deep.toml"
    deep.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    huge = tmp_path / "huge.toml"
    huge.write_text("x = " + "9" * 5000 + "\n")
    for path in (deep, huge):
        with pytest.raises(ConfigError, match="invalid TOML"):
            load_availability_config(path)


# --- [database] url ---------------------------------------------------------------------------


def test_database_url_puts_the_store_in_postgresql(tmp_path: Path) -> None:
    text = '[database]\nurl = "postgresql://cas:s3cret@db.example:5432/cas"\n'
    config = load_availability_config(write_config(tmp_path, text))
    assert config.database_url == "postgresql://cas:s3cret@db.example:5432/cas"
    assert config.database_shown == "postgresql://cas:***@db.example:5432/cas"
    # The local files (key store, lock) keep the default name beside the config.
    assert config.database_path == tmp_path / ".cas" / "cas.db"
    sqlite = load_availability_config(write_config(tmp_path, MINIMAL, "sqlite.toml"))
    assert sqlite.database_url is None
    assert sqlite.database_shown == str(tmp_path / "cas.db")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("mysql://cas:s3cret@db/cas", "is not a postgresql:// or postgres:// URL"),
        ("postgresql://cas:s3cret@db", "names no database"),
        ("postgresql://cas:s3cret@db:99999/cas", "is not a URL"),
        ("postgresql://cas:s3cret@db/ cas", "no white space"),
    ],
)
def test_a_bad_database_url_is_named_without_its_password(
    tmp_path: Path, url: str, problem: str
) -> None:
    message = config_error(write_config(tmp_path, f'[database]\nurl = "{url}"\n'))
    assert "cas.toml:2: [database] url:" in message
    assert problem in message
    assert "s3cret" not in message


def test_a_database_url_of_the_wrong_type_is_not_shown(tmp_path: Path) -> None:
    message = config_error(write_config(tmp_path, "[database]\nurl = ['s3cret']\n"))
    assert "[database] url" in message
    assert "s3cret" not in message
