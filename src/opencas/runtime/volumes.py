"""The volumes of a workload: opened into its private directory before it starts, sealed after.

Each volume the CAS granted is decrypted from its store (the session's path on this machine,
or the directory ``casctl run --volume-store NAME=DIR`` names) into the private directory,
below the session path's private copy (``/var/ledger`` becomes ``<private>/var/ledger``), and
the session path is replaced by that copy in the program's arguments, environment and working
directory, as for injection files. A store whose current tag is not the CAS's is refused before
the program starts. When the program exits with status 0, what it left is sealed back into the
store and the new tag reported to the CAS, which accepts it only if the volume is still at the
tag it was opened at; otherwise (another writer was first) the new manifest and objects are
removed again and casctl exits :data:`VOLUME_NOT_KEPT`. A program that fails or is killed
leaves the volume at its last reported tag: nothing it wrote is sealed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from opencas.client.channel import ApiError
from opencas.client.enclave import VolumeGrant
from opencas.errors import CasError, ClientError
from opencas.runtime.volume_store import (
    OpenedVolume,
    VolumeRefused,
    discard_replaced,
    open_volume,
    seal_volume,
)

logger = logging.getLogger(__name__)

#: casctl's exit code when the program succeeded but a volume's writes were not kept.
VOLUME_NOT_KEPT = 6

Reporter = Callable[[VolumeGrant, str | None, str], None]
"""Reports a volume's new tag (grant, previous tag, new tag) to the CAS; raises if refused."""


@dataclass(frozen=True)
class MountedVolume:
    """A granted volume, decrypted at ``opened.plain`` from ``opened.store``."""

    grant: VolumeGrant
    opened: OpenedVolume


def check_volume_paths(
    volumes: Sequence[VolumeGrant],
    files: Sequence[PurePosixPath],
    relative: Callable[[str], PurePosixPath],
) -> None:
    """Refuse volume paths that overlap each other or an injection file (``files``, relative
    to the private root), with :class:`ClientError` naming the path."""
    taken = list(files)
    for grant in volumes:
        place = relative(grant.path)
        for other in taken:
            if other == place or other in place.parents or place in other.parents:
                raise ClientError(f"volume {grant.name} at {grant.path} overlaps /{other}")
        taken.append(place)


def parse_volume_stores(values: Sequence[str]) -> dict[str, Path]:
    """``NAME=DIR`` options as a mapping; :class:`ClientError` for a malformed or repeated one."""
    stores: dict[str, Path] = {}
    for value in values:
        name, equals, directory = value.partition("=")
        if not equals or not name or not directory:
            raise ClientError(f"--volume-store {value!r} is not NAME=DIR")
        if name in stores:
            raise ClientError(f"--volume-store names volume {name} twice")
        stores[name] = Path(directory)
    return stores


def open_volumes(
    volumes: Sequence[VolumeGrant],
    private_root: Path,
    relative: Callable[[str], PurePosixPath],
    stores: Mapping[str, Path],
) -> list[MountedVolume]:
    """Decrypt every granted volume into its place below ``private_root``.

    Raises :class:`VolumeRefused` naming the volume, its session path and its store when a
    store is not at the CAS's current tag (rollback, changed outside) or a file is damaged.
    """
    unknown = set(stores) - {grant.name for grant in volumes}
    if unknown:
        raise ClientError(f"--volume-store names no volume of this service: {sorted(unknown)}")
    mounted = []
    for grant in volumes:
        store = stores.get(grant.name, Path(grant.path))
        plain = private_root / relative(grant.path)
        plain.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            opened = open_volume(grant.name, store, grant.key, grant.tag, plain)
        except VolumeRefused as exc:
            raise VolumeRefused(f"{exc.message} (mapped at {grant.path}, store {store})") from None
        mounted.append(MountedVolume(grant, opened))
    return mounted


def close_volumes(mounted: Sequence[MountedVolume], status: int, report: Reporter) -> int:
    """Seal and report what the program wrote, if it exited with ``status`` 0; casctl's exit
    status: ``status``, or :data:`VOLUME_NOT_KEPT` when a volume's writes were not kept."""
    if status != 0:
        for item in mounted:
            logger.warning(
                "the program exited with status %d: volume %s stays at its last reported tag; "
                "nothing it wrote there is kept",
                status,
                item.grant.name,
            )
        return status
    result = status
    for item in mounted:
        if not _seal_and_report(item, report):
            result = VOLUME_NOT_KEPT
    return result


def _seal_and_report(item: MountedVolume, report: Reporter) -> bool:
    name, opened = item.grant.name, item.opened
    try:
        sealed = seal_volume(opened)
    except VolumeRefused as exc:
        logger.error("%s; nothing was kept", exc.message)
        return False
    if sealed is None:
        return True
    manifest, tag = sealed
    try:
        report(item.grant, opened.tag, tag)
    except ApiError as exc:
        # The CAS refused: the new tag is not current and never will be, so what this run
        # added to the store goes again.
        discard_replaced(opened.store, tag, manifest, opened.manifest)
        logger.error("volume %s at %s: the CAS refused the new tag: %s", name, item.grant.path, exc)
        return False
    except CasError as exc:
        # Unknown whether the CAS took it: both manifests stay, and whichever tag the CAS holds
        # opens next time.
        logger.error("volume %s: the new tag %s could not be reported: %s", name, tag, exc)
        return False
    discard_replaced(opened.store, opened.tag, opened.manifest, manifest)
    return True


def volume_directory(
    directory: str | None,
    private_root: Path,
    volumes: Sequence[VolumeGrant],
    relative: Callable[[str], PurePosixPath],
) -> Path | None:
    """The private copy of ``directory`` (a ``pwd``) when it is a volume's path or below it."""
    if directory is None or directory == "/":
        return None
    place = relative(directory)
    for grant in volumes:
        root = relative(grant.path)
        if place == root or root in place.parents:
            return private_root / place
    return None
