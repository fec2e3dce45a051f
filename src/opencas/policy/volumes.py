"""Sharing volumes between sessions: the import and export rules, as for secrets. Pure.

A volume is exported and imported with the rules of secrets (``docs/sessions.md#volumes``): an
import names the exporter's session and volume, optionally pinned to the exporter's hash; an
export names a session (optionally pinned to the importer's hash) or a namespace; an unpinned
export to a session or namespace nobody holds yet is refused, because whoever creates it first
would receive the volume's key.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet

from opencas.policy.errors import SessionError
from opencas.policy.model import ExportRule, Session, VolumeImport
from opencas.policy.parse import export_place
from opencas.policy.secret_values import match_export, same_hash, unpinned_target
from opencas.sources.problems import Problem, in_text_order


def check_volume_import(
    importer: Session,
    name: str,
    spec: VolumeImport,
    exporter: Session | None,
    exporter_hash: str | None,
    importer_hash: str | None,
) -> None:
    """Refuse the import ``spec`` of ``importer``'s volume ``name`` unless the exporter allows it.

    ``exporter`` is the current version of the session ``spec`` names (``None``: there is none)
    and ``exporter_hash`` its hash; ``importer_hash`` the hash of the importing version. Allowed
    when the exporter exists and is another session, a pinned ``session_hash`` equals
    ``exporter_hash``, the exporter has the volume and does not import it itself, and one of
    the volume's ``export`` rules names the importer (pinned: at ``importer_hash``) or a
    namespace that holds it. Raises :class:`SessionError` naming the volume and why.
    """
    index = next((i for i, volume in enumerate(importer.volumes) if volume.name == name), None)
    path = f"volumes[{index}].import" if index is not None else "import"
    subject = f"volume {name!r} imports volume {spec.volume!r} of session {spec.session!r}"

    def refuse(why: str) -> SessionError:
        return SessionError(Problem.about(path, f"{subject}, but {why}"))

    if spec.session == importer.name:
        raise refuse("a session cannot import from itself; use the volume by its own name")
    if exporter is None:
        raise refuse("that session does not exist")
    if spec.session_hash is not None and not same_hash(exporter_hash, spec.session_hash):
        raise refuse(
            f"the import is pinned to session hash {spec.session_hash} and the session's current "
            f"hash is {exporter_hash}; check the new version, then pin its hash"
        )
    exported = exporter.volume(spec.volume)
    if exported is None:
        raise refuse("that session has no such volume")
    if exported.import_ is not None:
        raise refuse(
            f"that volume is itself imported from session {exported.import_.session!r}; "
            "import it from there"
        )
    match = match_export(exported.export, importer.name, importer_hash)
    if match == "allowed":
        return
    if match == "other-hash":
        raise refuse(
            f"the volume is exported to session {importer.name!r} only at another session hash "
            f"than this version's {importer_hash}"
        )
    raise refuse(f"the volume is not exported to session {importer.name!r} or a namespace of it")


def unpinned_volume_export_targets(exporter: Session) -> frozenset[str]:
    """The sessions and namespaces ``exporter``'s volume exports name without a hash pin (its
    own name left out)."""
    return frozenset(
        target
        for volume in exporter.volumes
        for rule in volume.export
        if (target := unpinned_target(exporter.name, rule)) is not None
    )


def check_volume_exports_claimed(
    exporter: Session, existing: AbstractSet[str], text: str | None = None
) -> None:
    """Refuse ``exporter`` if an unpinned volume export names a session or namespace not in
    ``existing`` (the names of :func:`unpinned_volume_export_targets` that exist now), with one
    problem per such export naming both fixes, at its line in ``text`` when given."""
    problems: list[Problem] = []
    for index, volume in enumerate(exporter.volumes):
        for rule in volume.export:
            target = unpinned_target(exporter.name, rule)
            if target is not None and target not in existing:
                problems.append(_unclaimed(index, volume.name, rule, target, text))
    if problems:
        raise SessionError(in_text_order(problems))


def _unclaimed(index: int, volume: str, rule: ExportRule, target: str, text: str | None) -> Problem:
    if rule.session is not None:
        what = (
            f"volume {volume!r} is exported to session {target!r} without a session_hash pin, "
            f"and there is no session {target!r} yet: whoever creates it first would receive "
            f"the volume's key. Create the session {target!r} first and then store this one, or "
            f"pin the importer: add 'session_hash: <hash of {target}>' to this export "
            "('casctl session hash FILE' prints it)"
        )
    else:
        what = (
            f"volume {volume!r} is exported to the namespace {target!r}, and there is no "
            f"session {target!r} yet: whoever creates it first would decide who receives the "
            f"volume's key. Create the namespace session {target!r} first and then store this "
            "one, or export to each importing session pinned to its hash"
        )
    place = export_place(text, volume, rule, "volumes") if text is not None else None
    if place is None:
        return Problem.about(f"volumes[{index}].export", what)
    key, line, column = place
    return Problem("", line, column, what, key)
