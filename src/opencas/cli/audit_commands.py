"""``casctl audit``: fetch a CAS's audit log, and verify one offline or against its CAS."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from rich.progress import Progress

from opencas.audit.archive import ArchiveReader
from opencas.audit.chain import (
    MAX_SEQ,
    Entry,
    Expectations,
    Head,
    Outcome,
    Verdict,
    is_hash,
    parse_entry,
)
from opencas.audit.replay import DECISION_EVENTS, Replayed, replay_decision
from opencas.audit.verify import verify_log
from opencas.cli.casctl_common import identity_from, identity_option, reports_errors
from opencas.client.pinning import pinned_client
from opencas.client.state import casctl_home, load_state
from opencas.collateral.given import command_line_source


@click.group("audit")
def audit_group() -> None:
    """Fetch and verify the CAS's audit log."""


def _hash_option(_: click.Context, parameter: click.Parameter, value: str | None) -> str | None:
    if value is not None and not is_hash(value.lower()):
        raise click.BadParameter(f"{parameter.name} is an entry or key hash: 64 hex digits")
    return value.lower() if value else None


@audit_group.command("fetch")
@click.option("--from", "start", type=click.IntRange(1, MAX_SEQ), default=1, show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--cas", "cas_name", help="Attested CAS (default: the default CAS).")
@identity_option
@reports_errors
def fetch(start: int, output: Path, cas_name: str | None, identity_path: Path | None) -> None:
    """Fetch the audit log from seq FROM on into OUTPUT (owner only)."""
    count = 0
    with pinned_client(cas_name, identity_from(identity_path)) as client, output.open("wb") as out:
        following: int | None = start
        while following is not None:
            page = client.audit_page(following)
            for line in page.entries:
                out.write(line.encode("utf-8") + b"\n")
            count += len(page.entries)
            following = page.next
    click.echo(
        f"fetched {count} entries into {output}; the CAS's head is seq {page.head.seq} "
        f"{page.head.hash}"
    )


@audit_group.command("verify")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--cas-key-hash", callback=_hash_option, help="The CAS whose log it must be.")
@click.option(
    "--predecessor",
    callback=_hash_option,
    help="Hash of the entry just before the file's first (a log fetched --from a later seq).",
)
@click.option("--last", callback=_hash_option, help="Hash of the entry the log must end with.")
@click.option("--cas", "cas_name", help="Check against this attested CAS's head and checkpoints.")
@identity_option
@click.option("--workers", type=click.IntRange(1, 256), help="Processes (default: one per core).")
@reports_errors
def verify(
    file: Path,
    cas_key_hash: str | None,
    predecessor: str | None,
    last: str | None,
    cas_name: str | None,
    identity_path: Path | None,
    workers: int | None,
) -> None:
    """Verify an audit log: signatures, chain, sequence, CAS identity, first and last entries.

    Exits 0 intact; 10 one failed operation was rolled back; 14 / 15 recent / older entries
    missing; 16 a rollback cannot be ruled out (nothing says where the log should end); 17
    rollback or missing entries; 18 rollback detected; 19 not from this CAS; 20 integrity
    violation.
    """
    expectations = Expectations(cas_key_hash=cas_key_hash, predecessor=predecessor, last=last)
    if cas_name is not None:
        expectations = _against_cas(expectations, cas_name, identity_path)
    with _progress() as progress:
        verdict = verify_log(
            file, expectations, workers=workers, progress=progress, warn=_warn(file)
        )
    _report(file, verdict)
    sys.exit(int(verdict.outcome))


def _against_cas(
    expectations: Expectations, cas_name: str, identity_path: Path | None
) -> Expectations:
    """``expectations`` with the CAS's current head, its checkpoints and the seq seen before."""
    _, pinned = load_state(casctl_home()).resolve(cas_name)
    with pinned_client(cas_name, identity_from(identity_path)) as client:
        page = client.audit_page(MAX_SEQ)
    return Expectations(
        cas_key_hash=expectations.cas_key_hash or pinned.cas_key_hash,
        predecessor=expectations.predecessor,
        last=expectations.last,
        head=Head(page.head.seq, page.head.hash),
        checkpoints={point.seq: point.hash for point in page.checkpoints},
        seen_seq=pinned.audit_seq,
    )


def _warn(file: Path) -> Callable[[str], None]:
    def warn(message: str) -> None:
        click.echo(f"casctl: {file}: {message}", err=True)

    return warn


@contextmanager
def _progress() -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr when it is a terminal.

    It is redrawn by the verification itself, not by rich's refresh thread: workers are forked
    from this process, and a fork while another thread holds a lock can leave the child waiting
    for that lock forever.
    """
    if not sys.stderr.isatty():
        yield None
        return
    with Progress(transient=True, auto_refresh=False) as bar:
        task = bar.add_task("verifying", total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, refresh=True)

        yield advance


def _report(file: Path, verdict: Verdict) -> None:
    for finding in verdict.findings:
        click.echo(f"casctl: {file}: {finding} [{int(finding.outcome)}]", err=True)
    last = f"seq {verdict.last.seq} {verdict.last.hash}" if verdict.last else "none"
    summary = (
        f"{file}: {verdict.entries} entries ({verdict.signed} signed, {verdict.starts} starts, "
        f"{verdict.failed} failed operations); last entry {last}"
    )
    click.echo(summary)
    if verdict.outcome == Outcome.INTACT:
        click.echo(f"{file}: intact")
    else:
        click.echo(f"{file}: {verdict.outcome.name.lower().replace('_', ' ')}: {verdict.message}")


#: ``casctl audit replay`` exits so when a decision came out otherwise, and when every decision
#: it could replay reproduced but some could not be replayed.
EXIT_DECISIONS_DIFFER = 30
EXIT_NOT_ALL_REPLAYED = 31
# A log that does not verify is not replayed: what it says it decided cannot be trusted.
_NOT_REPLAYABLE_LOGS = frozenset({Outcome.INTEGRITY, Outcome.FOREIGN})


@audit_group.command("replay")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--evidence",
    "evidence_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
    help="The evidence archive (the log's .evidence directory).",
)
@click.option(
    "--collateral",
    type=click.Path(exists=True, path_type=Path),
    help="Replay against this collateral (a bundle directory or one collateral JSON file) "
    "instead of the set each decision used.",
)
@click.option("--cas-key-hash", callback=_hash_option, help="The CAS whose log it must be.")
@click.option("--last", callback=_hash_option, help="Hash of the entry the log must end with.")
@click.option("--no-verify", is_flag=True, help="Replay without verifying the log first.")
@reports_errors
def replay(
    file: Path,
    evidence_dir: Path,
    collateral: Path | None,
    cas_key_hash: str | None,
    last: str | None,
    no_verify: bool,
) -> None:
    """Decide every recorded workload decision in FILE again, offline.

    Each workload_attested / workload_refused entry is checked again with its kept evidence
    at its recorded verification time, against its recorded collateral set (or --collateral)
    and the policy it was checked against. Exits 0 when every decision reproduces, 30 when
    some came out otherwise, 31 when none differs but some could not be replayed, 19 / 20
    (nothing replayed) when the log is not from its CAS or not intact.
    """
    if no_verify:
        click.echo(f"{file}: not verified (--no-verify): its entries are taken as they are")
    else:
        expectations = Expectations(cas_key_hash=cas_key_hash, last=last)
        verdict = verify_log(file, expectations, warn=_warn(file))
        if verdict.outcome in _NOT_REPLAYABLE_LOGS:
            _report(file, verdict)
            click.echo(f"{file}: not replayed: the log does not verify", err=True)
            sys.exit(int(verdict.outcome))
        click.echo(f"{file}: verified before replaying: {verdict.message}")
    source = command_line_source(collateral) if collateral is not None else None
    archive = ArchiveReader(evidence_dir)
    results = [
        replay_decision(entry, number, archive, source) for number, entry in _decisions(file)
    ]
    _report_replay(file, results)


def _decisions(file: Path) -> Iterator[tuple[int, Entry]]:
    """The workload decisions in FILE, with their line numbers."""
    with file.open("rb") as lines:
        for number, raw in enumerate(lines, 1):
            line = raw.rstrip(b"\n")
            if b"workload_" not in line:
                continue
            try:
                entry = parse_entry(line)
            except ValueError:
                continue  # verification named it; the replay takes only entries
            if entry.event in DECISION_EVENTS:
                yield number, entry


def _outcome_text(outcome: str) -> str:
    return outcome if outcome == "attested" else f"refused ({outcome})"


def _report_replay(file: Path, results: list[Replayed]) -> None:
    differ = [result for result in results if result.differs]
    skipped = [result for result in results if result.found is None]
    for result in differ:
        click.echo(
            f"{file}: line {result.line}: seq {result.seq} {result.subject}: was "
            f"{_outcome_text(result.recorded)}, now {_outcome_text(str(result.found))}"
            + (f": {result.reason}" if result.reason else "")
        )
    for result in skipped:
        click.echo(
            f"{file}: line {result.line}: seq {result.seq} {result.subject}: not replayed: "
            f"{result.reason}",
            err=True,
        )
    same = len(results) - len(differ) - len(skipped)
    click.echo(
        f"{file}: {len(results)} decisions: {same} reproduced, {len(differ)} differ, "
        f"{len(skipped)} not replayed"
    )
    if differ:
        sys.exit(EXIT_DECISIONS_DIFFER)
    if skipped:
        sys.exit(EXIT_NOT_ALL_REPLAYED)
