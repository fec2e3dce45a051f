"""Pinning: attest a CAS, check it is the one attested before, and remember it for later use.

casctl and other programs that keep a state directory (``CASCTL_HOME``, see
:mod:`opencas.client.state`) use :func:`attest_and_pin` once per CAS, and then
:func:`pinned_client` (the client API) or :func:`enclave_target` (the enclave API) to reach a
pinned CAS without attesting it again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from opencas.attestation.report import CasExpectations, VerifiedCas, cluster_of
from opencas.attestation.verifier import NO_COLLATERAL, CollateralSource
from opencas.client.cas_client import CasClient
from opencas.client.channel import ApiError, MalformedAnswer
from opencas.client.freshness import check_freshness
from opencas.client.identity import ClientIdentity
from opencas.client.state import (
    ALIAS_PATTERN,
    MAX_INSTANCES_REMEMBERED,
    CasctlState,
    PinnedCas,
    casctl_home,
    load_state,
    save_state,
)
from opencas.errors import ClientError


def cas_url(url: str) -> str:
    """``url`` as the CAS URL casctl pins: ``https://HOST:PORT``; :class:`ValueError` otherwise."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.netloc:
        raise ValueError("the CAS URL must be https://HOST:PORT")
    return f"https://{parts.netloc}"


def pin_name(url: str, alias: str | None) -> str:
    """The name to pin the CAS at ``url`` under: ``alias``, or its ``HOST:PORT``.

    Raises :class:`ValueError` when that is not a valid name.
    """
    name = alias or urlsplit(url).netloc or url
    if re.fullmatch(ALIAS_PATTERN, name) is None:
        raise ValueError(f"{name!r} is not a valid name")
    return name


@dataclass(frozen=True)
class Attested:
    """The outcome of :func:`attest_and_pin`: what was verified, and under which name it is kept."""

    name: str
    url: str
    verified: VerifiedCas
    expectations: CasExpectations
    is_default: bool
    """Whether ``name`` is the default CAS (the first one pinned is)."""

    def client(self, identity: ClientIdentity | None = None) -> CasClient:
        """A client pinned to this CAS, signing as ``identity`` when given."""
        return CasClient.pinned_to(self.url, self.verified, identity)


def attest_and_pin(
    url: str,
    expectations: CasExpectations,
    *,
    alias: str | None = None,
    accept_new_instance: bool = False,
    home: Path | None = None,
    collateral: CollateralSource = NO_COLLATERAL,
) -> Attested:
    """Attest the CAS at ``url`` against ``expectations``, check freshness, and pin it.

    The CAS is kept in the state of ``home`` (default: :func:`casctl_home`) under ``alias``
    (default: its ``HOST:PORT``), with its CA certificate, its enclave API port and the freshness
    facts; ``collateral`` is where the evidence's verifier gets its collateral. Raises
    :class:`AttestationRefused` / :class:`EvidenceError` when the CAS is not what
    ``expectations`` accept, :class:`FreshnessError` when it replaced or rolled back the CAS
    pinned under that name (unless ``accept_new_instance``), :class:`ClientError` for a URL or
    alias that cannot be pinned.
    """
    try:
        url = cas_url(url)
        name = pin_name(url, alias)
    except ValueError as exc:
        raise ClientError(str(exc)) from exc
    home = home or casctl_home()
    state = load_state(home)
    with CasClient(url) as client:
        verified = client.attest(expectations, collateral)
    check_freshness(state.cas.get(name), verified.report, accept_new_instance=accept_new_instance)
    _remember(home, state, name, url, verified, _enclave_port(url, verified))
    return Attested(name, url, verified, expectations, state.default == name)


def pinned_client(
    name: str | None = None,
    identity: ClientIdentity | None = None,
    *,
    home: Path | None = None,
) -> CasClient:
    """A client for the pinned CAS ``name`` (or the default), signing as ``identity``.

    Without ``identity`` it signs as the identity kept in ``home`` (default:
    :func:`casctl_home`), created on first use. Raises :class:`ClientError` when no CAS of
    that name is pinned.
    """
    home = home or casctl_home()
    _, pinned = load_state(home).resolve(name)
    return CasClient(
        pinned.url,
        ca_certificate_pem=pinned.ca_certificate_pem.encode("ascii"),
        cas_key_hash=pinned.cas_key_hash,
        identity=identity or ClientIdentity.load_or_create(home),
    )


def enclave_target(cas: str | None, state: CasctlState) -> tuple[str, bytes]:
    """The enclave API URL to use and the pinned CA certificate(s) its TLS must verify against.

    ``cas`` is an attested CAS's name (its enclave URL is its attested host with the enclave port
    stored at attestation), an enclave API URL ``https://HOST[:PORT]`` (verified against the CA
    of the pinned CAS instances with that host, else of the default CAS), or None for the
    default CAS. Raises :class:`ClientError` when no pinned CAS fits or its enclave port is
    unknown.
    """
    if cas is not None and "://" in cas:
        parts = urlsplit(cas)
        if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/"):
            raise ClientError(f"the enclave API URL must be https://HOST:PORT, not {cas!r}")
        host = parts.hostname
        pems = [
            pinned.ca_certificate_pem
            for _, pinned in sorted(state.cas.items())
            if urlsplit(pinned.url).hostname == host
        ]
        if not pems:
            pems = [state.resolve(None)[1].ca_certificate_pem]
        return f"https://{parts.netloc}", "".join(dict.fromkeys(pems)).encode("ascii")
    name, pinned = state.resolve(cas)
    if pinned.enclave_port is None:
        raise ClientError(
            f"casctl does not know the enclave API port of the CAS {name!r}: attest it again "
            "(`casctl attest`), or pass --cas https://HOST:PORT"
        )
    url = f"https://{_https_host(pinned.url)}:{pinned.enclave_port}"
    return url, pinned.ca_certificate_pem.encode("ascii")


def _https_host(url: str) -> str:
    host = urlsplit(url).hostname or ""
    return f"[{host}]" if ":" in host else host


def _enclave_port(url: str, verified: VerifiedCas) -> int | None:
    """The enclave API port the CAS reports in its version (asked over the channel just
    pinned), or None when it reports none."""
    try:
        with CasClient(url, ca_certificate_pem=verified.ca_certificate_pem) as client:
            return client.version().enclave_port
    except (ApiError, MalformedAnswer):
        return None


def _remember(
    home: Path,
    state: CasctlState,
    name: str,
    url: str,
    verified: VerifiedCas,
    enclave_port: int | None,
) -> None:
    report = verified.report
    previous = state.cas.get(name)
    cluster = cluster_of(report)
    same_cas = previous is not None and previous.cluster == cluster
    known = previous if previous is not None and same_cas else None
    restored = report.restored_from
    if known is not None and restored is not None and restored.snapshot_id != known.restored_from:
        # A restore accepted now: the state goes on from the snapshot, and so does the audit
        # chain of the instance that wrote it; what was seen after the snapshot is forgotten.
        known = known.model_copy(
            update={
                "audit_seqs": {
                    instance: seq
                    for instance, seq in known.audit_seqs.items()
                    if instance != report.instance_id
                },
                "audit_seq": 0,
                "state_counter": 0,
            }
        )
    instances = [seen for seen in (known.instances if known else []) if seen != report.instance_id]
    instances = [*instances, report.instance_id][-MAX_INSTANCES_REMEMBERED:]
    seen = max(report.audit.seq, known.audit_seq_of(report.instance_id) if known else 0)
    seqs = {
        instance: seq
        for instance, seq in (known.audit_seqs if known else {}).items()
        if instance in instances
    }
    seqs[report.instance_id] = seen
    counter = max(report.state.counter, known.state_counter if known else 0)
    state.cas[name] = PinnedCas(
        url=url,
        cas_key_hash=report.cas_key_hash,
        ca_certificate_pem=verified.ca_certificate_pem.decode("ascii"),
        instance_id=report.instance_id,
        cluster_id=cluster,
        instances=instances,
        audit_seq=seen,
        audit_seqs=seqs,
        state_counter=counter,
        software_measurement=report.software_measurement,
        platform=report.platform,
        mode=report.mode,
        attested_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        enclave_port=enclave_port,
        restored_from=restored.snapshot_id
        if restored is not None
        else (known.restored_from if known else None),
    )
    if state.default is None:
        state.default = name
    save_state(home, state)
