"""The availability config: how the ``cas`` server runs (``cas -c FILE``).

The operator's file. It holds no secrets: where the database lives, where the two APIs listen,
the names in the TLS certificate and which trusted execution environment the CAS runs in. It is
validated strictly: an unknown section or key, a wrong type or a bad value is a
:class:`~opencas.errors.ConfigError` that names the file, the key and the line.

Relative paths in the file are resolved against the directory of the file, so a config works
the same whichever directory ``cas`` is started from.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from opencas.attestation.simulated import MAX_SECURITY_VERSION
from opencas.config.checks import listed_once
from opencas.crypto.replay_cache import DEFAULT_CAPACITY, DEFAULT_IDENTITIES, DEFAULT_SHARE
from opencas.database_url import check_database_url, redact_url
from opencas.dns_names import canonical_hostname, host_name_problem
from opencas.errors import ConfigError
from opencas.platform.choice import DEFAULT_PLATFORM_KIND, PLATFORM_KINDS, PlatformSettings
from opencas.platform.gramine import DEFAULT_ATTESTATION_DIR
from opencas.platform.simulated import SimulatedSealing
from opencas.platform.tsm import DEFAULT_REPORT_DIR, MAX_PRIVLEVEL
from opencas.sources.problems import in_text_order
from opencas.sources.toml import load_toml, model_problems, toml_string

DEFAULT_DATABASE_PATH = ".cas/cas.db"
DEFAULT_API_LISTEN = "127.0.0.1:8081"
DEFAULT_ENCLAVE_LISTEN = "127.0.0.1:18765"
DEFAULT_HOSTNAMES = ("localhost", "127.0.0.1", "::1")
MAX_HOSTNAMES = 100
SIMULATED_KEY_FILE_NAME = "simulated-platform.key"
#: The simulated platform's key file inside a ``[platform] machine_dir``.
MACHINE_KEY_FILE_NAME = "platform.key"
COLLATERAL_CACHE_NAME = "collateral-cache"
TSM_KEY_FILE_NAME = "tsm-platform.key"
AUDIT_LOG_FILE_NAME = "audit.log"


# --- limits -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """How many connections each listener holds, and how long a connection may stall."""

    max_connections: int = 1000
    """Open connections per listener, counted from the moment they are accepted."""
    max_connections_per_source: int = 250
    """Open connections per listener from one IPv4 address or IPv6 /64 network."""
    tls_handshake_timeout: float = 10.0
    """Seconds from accepting a connection to the end of its TLS handshake."""
    request_header_timeout: float = 10.0
    """Seconds for a request's headers: from the handshake (first request) or its first byte."""
    keep_alive_timeout: int = 75
    """Seconds an idle connection is kept open between requests."""


@dataclass(frozen=True, slots=True)
class ReplayCacheLimits:
    """The memory of request proofs (``jti`` values), in total and per signing key."""

    entries: int = DEFAULT_CAPACITY
    entries_per_identity: int = DEFAULT_SHARE
    identities: int = DEFAULT_IDENTITIES


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """What one session may hold and cost, and how often one signing key may upload sessions."""

    max_session_bytes: int = 256 * 1024
    """UTF-8 bytes of a session's text, as uploaded."""
    max_placeholders_per_session: int = 1000
    """Placeholders in all of a session's services and injection files together."""
    max_secrets_per_session: int = 100
    """Secrets a session declares, imported ones included."""
    max_rsa_keys_per_session: int = 4
    """Secrets of a session that make or give an RSA key (checking a given one costs as much)."""
    max_rendered_config_bytes: int = 4 * 1024 * 1024
    """UTF-8 bytes of one service's configuration with every placeholder replaced."""
    session_uploads_per_minute: int = 30
    """Session creations and updates per signing key, sustained."""
    session_upload_burst: int = 30
    """Session creations and updates one signing key may make at once, after being idle."""
    session_upload_identities: int = 10_000
    """Signing keys whose upload rate is tracked at once; the longest idle is forgotten first."""
    otp_refusals_per_service: int = 5
    """Refused one-time passwords one service may have within ``otp_refusal_window``."""
    otp_refusal_window: float = 300.0
    """Seconds over which a service's refused one-time passwords are counted."""


@dataclass(frozen=True, slots=True)
class CollateralSettings:
    """Where the CAS gets the collateral it checks hardware evidence against (``[collateral]``)."""

    bundle: Path | None = None
    """An offline collateral bundle directory, asked first (``casctl collateral fetch``)."""
    cache_directory: Path | None = None
    """Where fetched collateral is kept (a bundle directory); None: in memory only."""
    fetch: bool = True
    """Whether to fetch from the PCCS (owner config ``[dcap]``) and AMD's KDS."""
    amd_kds_url: str = "https://kdsintf.amd.com"
    ca_certificates: Path | None = None
    """PEM CA certificates that authenticate the PCCS and KDS; None: the system's."""
    fetch_timeout: float = 10.0
    """Seconds to connect to a server, and between two reads of its answer."""
    simulated_roots: frozenset[str] = frozenset()
    """Key hashes of simulated collateral roots (development and tests): when set, simulated
    evidence takes its TCB status from simulated collateral signed by one of them."""


# --- addresses and names ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """A TCP address to listen on: an IP literal (canonical form) or a lowercase hostname."""

    host: str
    port: int

    def __str__(self) -> str:
        """``host:port``, or ``[host]:port`` for an IPv6 host."""
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


_PORT = re.compile(r"[0-9]+")
_LISTEN_FORM = "expected HOST:PORT, such as 127.0.0.1:8081 or [::1]:8081"


def parse_listen_address(text: str) -> ListenAddress:
    """Parse ``host:port`` or ``[ipv6]:port`` into a :class:`ListenAddress`.

    The host is an IPv4 literal, a hostname (checked against DNS syntax, returned in lowercase)
    or, in brackets, an IPv6 literal (returned in canonical form); the port is 1 to 65535.
    Raises ``ValueError`` whose message quotes ``text`` and says what is wrong with it.
    """
    try:
        host, port_text = _split_host_port(text)
        port = _parse_port(port_text)
    except ValueError as error:
        raise ValueError(f"invalid address {text!r}: {error}") from None
    return ListenAddress(host=host, port=port)


def _split_host_port(text: str) -> tuple[str, str]:
    """The canonical host and the port text of ``text``; ``ValueError`` saying why not."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError("missing ']' after the IPv6 address")
        host_text, rest = text[1:close], text[close + 1 :]
        if not rest.startswith(":"):
            raise ValueError(f"no port after ']'; {_LISTEN_FORM}")
        try:
            return str(ipaddress.IPv6Address(host_text)), rest[1:]
        except ValueError:
            raise ValueError(
                f"{host_text!r} is not an IPv6 address (only IPv6 addresses go in brackets)"
            ) from None
    host_text, colon, port_text = text.rpartition(":")
    if not colon:
        raise ValueError(f"no port; {_LISTEN_FORM}")
    if ":" in host_text:
        raise ValueError(f"write IPv6 addresses in brackets, as in [{host_text}]:{port_text}")
    if not host_text:
        raise ValueError("no host; use 0.0.0.0 to listen on every IPv4 address")
    try:
        return str(ipaddress.IPv4Address(host_text)), port_text
    except ValueError:
        problem = host_name_problem(host_text)
        if problem is not None:
            raise ValueError(
                f"host is neither an IP address nor a valid hostname: {problem}"
            ) from None
    return host_text.lower(), port_text


def _parse_port(text: str) -> int:
    if not text:
        raise ValueError(f"no port; {_LISTEN_FORM}")
    if not _PORT.fullmatch(text):
        raise ValueError(f"port {text!r} is not a number")
    if len(text) > 5 or not 1 <= int(text) <= 65535:
        raise ValueError(f"port {text} is out of range 1-65535")
    return int(text)


def _is_wildcard(host: str) -> bool:
    """Whether ``host`` is the unspecified address (0.0.0.0 or ::), which binds every interface."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _listen_address(text: str) -> str:
    return str(parse_listen_address(text))


def _local_path(text: str) -> str:
    if not text:
        raise ValueError("empty path")
    if "\x00" in text:
        raise ValueError("path contains a NUL character")
    if text.startswith("~"):
        raise ValueError(
            f"{text!r}: '~' is not expanded; write an absolute path "
            "or one relative to the directory of this file"
        )
    return text


def _platform_kind(kind: str) -> str:
    if kind in PLATFORM_KINDS:
        return kind
    raise ValueError(f"unknown platform kind {kind!r}; known kinds: {', '.join(PLATFORM_KINDS)}")


# --- the file's schema (internal) ---------------------------------------------------------------

_ListenText = Annotated[str, AfterValidator(_listen_address)]
_CertificateName = Annotated[str, AfterValidator(canonical_hostname)]
_LocalPath = Annotated[str, AfterValidator(_local_path)]
_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)


class _DatabaseSection(BaseModel):
    model_config = _STRICT

    # Required for SQLite; with a url it names only the local files (<path>.key-store and
    # <path>.lock) and has a default.
    path: _LocalPath
    url: Annotated[str, AfterValidator(check_database_url)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_path_beside_a_url(cls, data: object) -> object:
        if isinstance(data, dict) and "url" in data and "path" not in data:
            return {**data, "path": DEFAULT_DATABASE_PATH}
        return data


class _ApiSection(BaseModel):
    model_config = _STRICT

    api_listen: _ListenText = DEFAULT_API_LISTEN
    # Validated even when left out, so that an api_listen set to the enclave default is caught.
    enclave_listen: _ListenText = Field(default=DEFAULT_ENCLAVE_LISTEN, validate_default=True)
    hostnames: Annotated[list[_CertificateName], AfterValidator(listed_once)] = Field(
        default_factory=lambda: list(DEFAULT_HOSTNAMES), min_length=1, max_length=MAX_HOSTNAMES
    )

    @field_validator("enclave_listen")
    @classmethod
    def _apart_from_api_listen(cls, value: str, info: ValidationInfo) -> str:
        api_text = info.data.get("api_listen")
        if api_text is None:
            return value  # api_listen is invalid itself; that error is reported on its own
        api, enclave = parse_listen_address(api_text), parse_listen_address(value)
        if api.port != enclave.port:
            return value
        if api.host == enclave.host:
            raise ValueError(
                f"same address as api_listen ({api}); the two listeners need different addresses"
            )
        if _is_wildcard(api.host) or _is_wildcard(enclave.host):
            raise ValueError(
                f"{enclave} overlaps api_listen ({api}): a wildcard address takes the port on "
                "every interface; use different ports"
            )
        return value


class _PlatformSection(BaseModel):
    model_config = _STRICT

    # "auto" finds the TEE; where it finds none it runs simulated, which clients see as debug.
    kind: Annotated[str, AfterValidator(_platform_kind)] = DEFAULT_PLATFORM_KIND
    key_file: _LocalPath | None = None
    # A simulated machine: the directory that holds its platform key, so that one host can run
    # several machines (a primary, a backup, an unrelated one), each sealing under its own key.
    machine_dir: _LocalPath | None = None
    tsm_key_file: _LocalPath | None = None
    gramine_attestation_dir: _LocalPath = str(DEFAULT_ATTESTATION_DIR)
    tsm_report_dir: _LocalPath = str(DEFAULT_REPORT_DIR)
    tsm_privlevel: Annotated[int, Field(ge=0, le=MAX_PRIVLEVEL)] | None = None
    # The security version a simulated machine's evidence states, as an SGX enclave's ISV SVN:
    # set here by the machine's operator only, so that tests can run builds of one family at
    # different versions (a backup below its primary is refused).
    simulated_security_version: Annotated[int, Field(ge=0, le=MAX_SECURITY_VERSION)] = 0
    # What a simulated machine's sealing binds: the machine ("machine"), or the machine and the
    # build's measurement ("measurement"), so that a new build cannot unseal an old build's key
    # store, as on Gramine SGX. The operator's setting only; no request can change it.
    simulated_sealing: SimulatedSealing = "machine"

    @field_validator("machine_dir")
    @classmethod
    def _not_with_key_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("key_file") is not None:
            raise ValueError(
                "key_file and machine_dir both name the simulated platform's key; "
                f"write only one (machine_dir keeps it in {MACHINE_KEY_FILE_NAME} there)"
            )
        return value


def _https_url(text: str) -> str:
    if not text.startswith("https://") or len(text) <= len("https://"):
        raise ValueError(f"{text[:80]!r} is not an https:// URL")
    if any(c.isspace() for c in text) or len(text) > 2048:
        raise ValueError("a URL must have no white space and at most 2048 characters")
    return text.rstrip("/")


_COLLATERAL = CollateralSettings()


def _key_hash_text(value: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError("a key hash is 64 lowercase hex digits")
    return value


_KeyHashText = Annotated[str, AfterValidator(_key_hash_text)]


class _CollateralSection(BaseModel):
    model_config = _STRICT

    bundle: _LocalPath | None = None
    cache_directory: _LocalPath | None = None
    fetch: bool = _COLLATERAL.fetch
    amd_kds_url: Annotated[str, AfterValidator(_https_url)] = _COLLATERAL.amd_kds_url
    ca_certificates: _LocalPath | None = None
    fetch_timeout: Annotated[float, Field(gt=0, le=300)] = _COLLATERAL.fetch_timeout
    simulated_roots: list[_KeyHashText] = Field(default_factory=list)


_CONNECTIONS = ConnectionLimits()
_REPLAY_CACHE = ReplayCacheLimits()
_SESSIONS = SessionLimits()
_Count = Annotated[int, Field(ge=1, le=10_000_000)]
MAX_SESSION_BYTES = 1024 * 1024
"""The most ``max_session_bytes`` may be: what a request body holds (it is at most 2 MiB)."""
_Seconds = Annotated[float, Field(gt=0, le=3600)]
KEY_ROLLOVER_BATCH = 1000
"""Records a key rollover moves to the new database key per transaction, unless the config says."""
UPGRADE_ANSWER_TIMEOUT = 60.0
"""Seconds a build upgrading in place waits for the running instance's answer, unless the config
says (``[limits] upgrade_answer_timeout``)."""
UPGRADE_WAIT = 600.0
"""Seconds a build upgrading in place waits for the running instance to stop, unless the config
says (``[limits] upgrade_wait``)."""


class _LimitsSection(BaseModel):
    model_config = _STRICT

    max_connections: _Count = _CONNECTIONS.max_connections
    max_connections_per_source: _Count = _CONNECTIONS.max_connections_per_source
    tls_handshake_timeout: _Seconds = _CONNECTIONS.tls_handshake_timeout
    request_header_timeout: _Seconds = _CONNECTIONS.request_header_timeout
    keep_alive_timeout: Annotated[int, Field(ge=1, le=3600)] = _CONNECTIONS.keep_alive_timeout
    replay_cache_entries: _Count = _REPLAY_CACHE.entries
    replay_cache_entries_per_identity: _Count = _REPLAY_CACHE.entries_per_identity
    replay_cache_identities: _Count = _REPLAY_CACHE.identities
    max_session_bytes: Annotated[int, Field(ge=1, le=MAX_SESSION_BYTES)] = (
        _SESSIONS.max_session_bytes
    )
    max_placeholders_per_session: _Count = _SESSIONS.max_placeholders_per_session
    max_secrets_per_session: _Count = _SESSIONS.max_secrets_per_session
    max_rsa_keys_per_session: Annotated[int, Field(ge=0, le=10_000_000)] = (
        _SESSIONS.max_rsa_keys_per_session
    )
    max_rendered_config_bytes: _Count = _SESSIONS.max_rendered_config_bytes
    session_uploads_per_minute: _Count = _SESSIONS.session_uploads_per_minute
    session_upload_burst: _Count = _SESSIONS.session_upload_burst
    session_upload_identities: _Count = _SESSIONS.session_upload_identities
    otp_refusals_per_service: _Count = _SESSIONS.otp_refusals_per_service
    otp_refusal_window: _Seconds = _SESSIONS.otp_refusal_window
    key_rollover_batch: Annotated[int, Field(ge=1, le=100_000)] = KEY_ROLLOVER_BATCH
    key_rollover_pause: Annotated[float, Field(ge=0, le=10)] = 0.0
    upgrade_answer_timeout: _Seconds = UPGRADE_ANSWER_TIMEOUT
    upgrade_wait: Annotated[float, Field(gt=0, le=86_400)] = UPGRADE_WAIT

    @field_validator("max_connections_per_source")
    @classmethod
    def _within_max_connections(cls, value: int, info: ValidationInfo) -> int:
        total = info.data.get("max_connections")
        if total is not None and value > total:
            raise ValueError(f"{value} is more than max_connections ({total})")
        return value

    @field_validator("replay_cache_entries_per_identity")
    @classmethod
    def _within_replay_cache_entries(cls, value: int, info: ValidationInfo) -> int:
        total = info.data.get("replay_cache_entries")
        if total is not None and value > total:
            raise ValueError(f"{value} is more than replay_cache_entries ({total})")
        return value

    def connections(self) -> ConnectionLimits:
        return ConnectionLimits(
            max_connections=self.max_connections,
            max_connections_per_source=self.max_connections_per_source,
            tls_handshake_timeout=self.tls_handshake_timeout,
            request_header_timeout=self.request_header_timeout,
            keep_alive_timeout=self.keep_alive_timeout,
        )

    def sessions(self) -> SessionLimits:
        return SessionLimits(
            max_session_bytes=self.max_session_bytes,
            max_placeholders_per_session=self.max_placeholders_per_session,
            max_secrets_per_session=self.max_secrets_per_session,
            max_rsa_keys_per_session=self.max_rsa_keys_per_session,
            max_rendered_config_bytes=self.max_rendered_config_bytes,
            session_uploads_per_minute=self.session_uploads_per_minute,
            session_upload_burst=self.session_upload_burst,
            session_upload_identities=self.session_upload_identities,
            otp_refusals_per_service=self.otp_refusals_per_service,
            otp_refusal_window=self.otp_refusal_window,
        )

    def replay_cache(self) -> ReplayCacheLimits:
        return ReplayCacheLimits(
            entries=self.replay_cache_entries,
            entries_per_identity=self.replay_cache_entries_per_identity,
            identities=self.replay_cache_identities,
        )


class _AuditLogSection(BaseModel):
    model_config = _STRICT

    path: _LocalPath | None = None


MAX_BACKUP_INTERVAL = 7 * 24 * 3600
#: Seconds a ``[backup] command`` has to ship one snapshot (``command_timeout``).
BACKUP_COMMAND_TIMEOUT = 600.0
MAX_BACKUP_COMMAND_TIMEOUT = 24 * 3600
_CommandWord = Annotated[str, Field(min_length=1, max_length=4096)]


class _BackupSection(BaseModel):
    model_config = _STRICT

    interval: Annotated[int, Field(ge=1, le=MAX_BACKUP_INTERVAL)] | None = None
    directory: _LocalPath | None = None
    command: Annotated[list[_CommandWord], Field(min_length=1, max_length=64)] | None = None
    command_timeout: Annotated[float, Field(gt=0, le=MAX_BACKUP_COMMAND_TIMEOUT)] | None = None

    @field_validator("command")
    @classmethod
    def _one_target(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is not None and info.data.get("directory") is not None:
            raise ValueError("directory and command both name where snapshots go; write only one")
        return value

    @model_validator(mode="after")
    def _a_target_for_the_interval(self) -> _BackupSection:
        if self.interval is not None and self.directory is None and self.command is None:
            raise ValueError(
                "interval needs a target: a directory, or a command that ships each snapshot"
            )
        if self.command_timeout is not None and self.command is None:
            raise ValueError(
                "command_timeout is the time a command has to ship a snapshot; it needs a command"
            )
        return self


@dataclass(frozen=True, slots=True)
class BackupSettings:
    """Where the CAS writes its snapshots (``[backup]``), and how often; nothing set: no
    periodic snapshots, and an owner's request for one is refused."""

    interval: int | None = None
    """Seconds between two snapshots; ``None``: only when the owner asks for one."""
    directory: Path | None = None
    """The directory snapshots are written to (absolute)."""
    command: tuple[str, ...] | None = None
    """The argv that ships a snapshot: the snapshot file's path is appended to it."""
    command_timeout: float = BACKUP_COMMAND_TIMEOUT
    """Seconds the command has to ship one snapshot; it is killed after them."""

    @property
    def configured(self) -> bool:
        """Whether snapshots have a target."""
        return self.directory is not None or self.command is not None


class _AvailabilityFile(BaseModel):
    model_config = _STRICT

    database: _DatabaseSection
    audit_log: _AuditLogSection = Field(default_factory=_AuditLogSection)
    api: _ApiSection = Field(default_factory=_ApiSection)
    platform: _PlatformSection = Field(default_factory=_PlatformSection)
    limits: _LimitsSection = Field(default_factory=_LimitsSection)
    collateral: _CollateralSection = Field(default_factory=_CollateralSection)
    backup: _BackupSection = Field(default_factory=_BackupSection)


# --- the resolved config ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AvailabilityConfig:
    """A validated availability config, with every default applied and every path absolute."""

    source: Path
    """The config file (absolute)."""
    database_path: Path
    """The SQLite file; with :attr:`database_url`, the name the local files are kept under
    (``<path>.key-store``, ``<path>.lock``)."""
    api_listen: ListenAddress
    enclave_listen: ListenAddress
    hostnames: tuple[str, ...]
    """DNS names and IP addresses (canonical form) for the CAS's TLS certificate."""
    platform: PlatformSettings
    """Which platform the CAS runs on and where its files are (key files beside the database
    unless the file says otherwise)."""
    audit_log_path: Path
    """The audit log's file (file sink); ``audit.log`` beside the database unless set."""
    connection_limits: ConnectionLimits = _CONNECTIONS
    """Applied to each listener separately."""
    replay_cache_limits: ReplayCacheLimits = _REPLAY_CACHE
    session_limits: SessionLimits = _SESSIONS
    collateral: CollateralSettings = _COLLATERAL
    """Paths absolute; the cache beside the database unless the file says otherwise."""
    database_url: str | None = None
    """The PostgreSQL database of the store; ``None``: the SQLite file at :attr:`database_path`.
    It may hold a password: show :attr:`database_shown`, never this."""
    key_rollover_batch: int = KEY_ROLLOVER_BATCH
    """Records a key rollover moves per transaction (``[limits] key_rollover_batch``)."""
    key_rollover_pause: float = 0.0
    """Seconds a key rollover waits between two batches (``[limits] key_rollover_pause``)."""
    upgrade_answer_timeout: float = UPGRADE_ANSWER_TIMEOUT
    """Seconds a build upgrading in place waits for the running instance's answer
    (``[limits] upgrade_answer_timeout``)."""
    upgrade_wait: float = UPGRADE_WAIT
    """Seconds a build upgrading in place, once it has the key, waits for the running instance
    to stop (``[limits] upgrade_wait``)."""
    backup: BackupSettings = BackupSettings()
    """Where snapshots go (``[backup]``); relative paths resolved against the config's directory."""

    @property
    def database_shown(self) -> str:
        """The database as logs and messages name it: the path, or the URL without password."""
        if self.database_url is not None:
            return redact_url(self.database_url)
        return str(self.database_path)

    @property
    def platform_kind(self) -> str:
        """``[platform] kind``: ``auto``, ``gramine-sgx``, ``simulated`` or ``tsm``."""
        return self.platform.kind

    @property
    def platform_key_file(self) -> Path:
        """The simulated platform's key file."""
        return self.platform.simulated_key_file


def load_availability_config(path: Path) -> AvailabilityConfig:
    """Read, validate and resolve the availability config at ``path``.

    Relative paths in the file are resolved against the file's directory. Raises
    :class:`ConfigError` if the file is missing or unreadable, is not valid TOML, has an unknown
    section or key, a value of the wrong type, a bad listen address or certificate name, the
    same address for both listeners, an unknown platform kind or a privilege level out of range.
    The message lists every problem, each naming the file, the key and the line.
    """
    document = load_toml(path)
    try:
        parsed = _AvailabilityFile.model_validate(document.data)
    except ValidationError as error:
        problems = model_problems(
            error,
            source=document.source,
            model=_AvailabilityFile,
            data=document.data,
            lines=document.lines(),
            is_secret=lambda loc: tuple(loc) == ("database", "url"),
        )
        raise ConfigError(in_text_order(problems)) from error
    source = path.absolute()
    database_path = _resolve(source.parent, parsed.database.path)
    if parsed.audit_log.path is None:
        audit_log_path = database_path.parent / AUDIT_LOG_FILE_NAME
    else:
        audit_log_path = _resolve(source.parent, parsed.audit_log.path)
    return AvailabilityConfig(
        source=source,
        database_path=database_path,
        audit_log_path=audit_log_path,
        api_listen=parse_listen_address(parsed.api.api_listen),
        enclave_listen=parse_listen_address(parsed.api.enclave_listen),
        hostnames=tuple(parsed.api.hostnames),
        platform=_platform_settings(parsed.platform, source.parent, database_path.parent),
        connection_limits=parsed.limits.connections(),
        replay_cache_limits=parsed.limits.replay_cache(),
        session_limits=parsed.limits.sessions(),
        collateral=_collateral_settings(parsed.collateral, source.parent, database_path),
        database_url=parsed.database.url,
        key_rollover_batch=parsed.limits.key_rollover_batch,
        key_rollover_pause=parsed.limits.key_rollover_pause,
        upgrade_answer_timeout=parsed.limits.upgrade_answer_timeout,
        upgrade_wait=parsed.limits.upgrade_wait,
        backup=BackupSettings(
            interval=parsed.backup.interval,
            directory=None
            if parsed.backup.directory is None
            else _resolve(source.parent, parsed.backup.directory),
            command=None if parsed.backup.command is None else tuple(parsed.backup.command),
            command_timeout=BACKUP_COMMAND_TIMEOUT
            if parsed.backup.command_timeout is None
            else parsed.backup.command_timeout,
        ),
    )


def _collateral_settings(
    section: _CollateralSection, base: Path, database_path: Path
) -> CollateralSettings:
    def resolved(text: str | None) -> Path | None:
        return None if text is None else _resolve(base, text)

    cache = resolved(section.cache_directory) or database_path.parent / COLLATERAL_CACHE_NAME
    return CollateralSettings(
        bundle=resolved(section.bundle),
        cache_directory=cache,
        fetch=section.fetch,
        amd_kds_url=section.amd_kds_url,
        ca_certificates=resolved(section.ca_certificates),
        fetch_timeout=section.fetch_timeout,
        simulated_roots=frozenset(section.simulated_roots),
    )


def _platform_settings(
    section: _PlatformSection, base: Path, database_directory: Path
) -> PlatformSettings:
    def key_file(text: str | None, default_name: str) -> Path:
        return database_directory / default_name if text is None else _resolve(base, text)

    simulated_key_file = key_file(section.key_file, SIMULATED_KEY_FILE_NAME)
    if section.machine_dir is not None:
        simulated_key_file = _resolve(base, section.machine_dir) / MACHINE_KEY_FILE_NAME
    return PlatformSettings(
        kind=section.kind,
        simulated_key_file=simulated_key_file,
        tsm_key_file=key_file(section.tsm_key_file, TSM_KEY_FILE_NAME),
        gramine_attestation_dir=_resolve(base, section.gramine_attestation_dir),
        tsm_report_dir=_resolve(base, section.tsm_report_dir),
        tsm_privlevel=section.tsm_privlevel,
        simulated_security_version=section.simulated_security_version,
        simulated_sealing=section.simulated_sealing,
    )


def _resolve(base: Path, text: str) -> Path:
    path = Path(text)
    return path if path.is_absolute() else base / path


def default_availability_config(database_path: str = DEFAULT_DATABASE_PATH) -> str:
    """The TOML text ``cas init-config`` writes: commented, every key set to its default.

    The one exception is the platform kind: the file is for development, so it says
    ``simulated`` rather than ``auto``, and a development CAS started on a confidential VM does
    not quietly become a production one. ``database_path`` is written as given (relative paths
    are read relative to the config file); the key files are placed beside it. The text loads
    with :func:`load_availability_config`.
    """
    key_file = str(Path(database_path).parent / SIMULATED_KEY_FILE_NAME)
    tsm_key_file = str(Path(database_path).parent / TSM_KEY_FILE_NAME)
    audit_log = str(Path(database_path).parent / AUDIT_LOG_FILE_NAME)
    hostnames = ", ".join(toml_string(name) for name in DEFAULT_HOSTNAMES)
    connections, replay, sessions = _CONNECTIONS, _REPLAY_CACHE, _SESSIONS
    return f"""\
# OpenCAS availability config: how the `cas` server runs (`cas -c THIS-FILE`).
# It holds no secrets. Relative paths are resolved against the directory of this file.

[database]
# The encrypted state store (SQLite). Its sealed key is kept beside it, in <path>.key-store.
path = {toml_string(database_path)}
# Or a PostgreSQL database, shared by several CAS instances (docs/operations.md). The store is
# then there, still encrypted; the sealed key stays in <path>.key-store on this machine.
# url = "postgresql://cas@db.example:5432/cas"

[audit_log]
# The audit log's file, when the owner config's [audit_log] sink is "file" (the default).
path = {toml_string(audit_log)}

[api]
# The client API (casctl and the SDK), as HOST:PORT or [IPv6]:PORT.
api_listen = {toml_string(DEFAULT_API_LISTEN)}
# The enclave API, which workloads attest to; it must differ from api_listen.
enclave_listen = {toml_string(DEFAULT_ENCLAVE_LISTEN)}
# DNS names and IP addresses in the CAS's TLS certificate (at most {MAX_HOSTNAMES}).
hostnames = [{hostnames}]

[platform]
# The trusted execution environment the CAS runs in (docs/deployment.md): "gramine-sgx", "tsm"
# (a TDX or SEV-SNP confidential VM), "auto" (the default: whichever of the two it finds, else
# simulated) or "simulated", for development and tests only: it protects nothing, and the CAS
# reports itself in debug mode.
kind = "simulated"
# The simulated platform's key file, which stands in for the hardware's sealing key.
key_file = {toml_string(key_file)}
# Or a simulated machine's directory (its key is platform.key there), instead of key_file, to
# run several machines on one host (docs/operations.md, "Machines in simulation").
# machine_dir = "machines/primary"
# What the simulated platform's sealing binds: "machine", or "measurement" (also this build, so
# that another build cannot unseal it, as Gramine SGX's MRENCLAVE key).
# simulated_sealing = "machine"
# On "tsm", the key file that seals the database key; it must be on the VM's encrypted disk.
tsm_key_file = {toml_string(tsm_key_file)}
# Gramine's attestation pseudo file system, and configfs-tsm's report directory.
gramine_attestation_dir = {toml_string(str(DEFAULT_ATTESTATION_DIR))}
tsm_report_dir = {toml_string(str(DEFAULT_REPORT_DIR))}
# On SEV-SNP, the VMPL (0 to {MAX_PRIVLEVEL}) to ask reports for; left out, the kernel's default.
# tsm_privlevel = 0

[limits]
# What one client can hold of the CAS (docs/operations.md). Connection limits apply to each
# listener separately; a source is one IPv4 address or one IPv6 /64 network.
max_connections = {connections.max_connections}
max_connections_per_source = {connections.max_connections_per_source}
# Seconds: to finish the TLS handshake; to send a request's headers; idle between requests.
tls_handshake_timeout = {connections.tls_handshake_timeout}
request_header_timeout = {connections.request_header_timeout}
keep_alive_timeout = {connections.keep_alive_timeout}
# The memory of request proofs: in total, per signing key, and how many keys it tracks.
replay_cache_entries = {replay.entries}
replay_cache_entries_per_identity = {replay.entries_per_identity}
replay_cache_identities = {replay.identities}
# What one session may hold and cost: its text in bytes (at most {MAX_SESSION_BYTES}), its
# placeholders, its secrets, the RSA keys it makes or gives, and one service's rendered
# configuration in bytes.
max_session_bytes = {sessions.max_session_bytes}
max_placeholders_per_session = {sessions.max_placeholders_per_session}
max_secrets_per_session = {sessions.max_secrets_per_session}
max_rsa_keys_per_session = {sessions.max_rsa_keys_per_session}
max_rendered_config_bytes = {sessions.max_rendered_config_bytes}
# Session creations and updates per signing key: per minute, at once, and how many keys are
# tracked.
session_uploads_per_minute = {sessions.session_uploads_per_minute}
session_upload_burst = {sessions.session_upload_burst}
session_upload_identities = {sessions.session_upload_identities}
# Wrong or reused one-time passwords one service may give within a window of seconds, before
# its attestations with a code are refused until the window has passed.
otp_refusals_per_service = {sessions.otp_refusals_per_service}
otp_refusal_window = {sessions.otp_refusal_window}
# Records a database key rollover (casctl start-upgrade) re-encrypts per transaction, 1 to
# 100000: fewer hold the writers back for less time each, more finish sooner.
key_rollover_batch = {KEY_ROLLOVER_BATCH}
# Seconds (0 to 10) it waits between two batches, to leave a busy disk to the other writers.
key_rollover_pause = 0.0
# A new build upgrading in place on SQLite (docs/operations.md): seconds (up to 3600) it waits
# for the running instance's answer, and then (up to 86400) for that instance to stop.
upgrade_answer_timeout = {UPGRADE_ANSWER_TIMEOUT}
upgrade_wait = {UPGRADE_WAIT}

[collateral]
# What the CAS checks hardware evidence against (Intel DCAP collateral, AMD certificates;
# docs/deployment.md). An offline bundle directory (`casctl collateral fetch`), asked first:
# bundle = "collateral-bundle"
# Where fetched collateral is kept between starts (default: beside the database):
# cache_directory = {toml_string(str(Path(database_path).parent / COLLATERAL_CACHE_NAME))}
# Fetch from the PCCS of the owner config's [dcap] pccs_url (Intel's PCS if unset) and from
# AMD's KDS. Set to false on a site without network access.
fetch = true
amd_kds_url = {toml_string(_COLLATERAL.amd_kds_url)}
# PEM CA certificates that authenticate the PCCS and the KDS (default: the system's):
# ca_certificates = "pccs-ca.pem"
# Seconds to connect to a server, and between two reads of its answer.
fetch_timeout = {_COLLATERAL.fetch_timeout}
# Development and tests: key hashes of simulated collateral roots; simulated evidence then takes
# its TCB status from the simulated collateral (bundle/simulated/collateral.json) one signed.
# simulated_roots = []

[backup]
# Encrypted snapshots of the store (docs/operations.md#snapshots). Left out: none are written.
# Seconds between two snapshots (taken only when the store changed since the last one):
# interval = 3600
# Where they go: a directory, or a command that ships each one (its path is appended):
# directory = "snapshots"
# command = ["/usr/local/bin/ship-snapshot"]
# Seconds the command has to ship one snapshot before it is killed and the snapshot fails:
# command_timeout = {BACKUP_COMMAND_TIMEOUT:g}
"""
