"""The builds this build of OpenCAS takes a running CAS's database key from: its predecessors.

A new build that joins a running CAS (on PostgreSQL, by attesting to one of its instances) checks
the instance that hands it the key (:func:`opencas.attestation.peer_admission.check_key_source`),
so that it never serves a database that anything but OpenCAS made. On SGX a build of the same
signer and product is recognised by its MRSIGNER; on a platform without a signer (TDX, SNP, the
simulated one) nothing in the older build's evidence says that it is OpenCAS, so a release names
the measurements of the builds it upgrades here. This file is part of what is measured (the
package's files in simulation, the image on a TEE), so the list cannot be changed without
changing the build's own measurement.

The owner's side of an upgrade is :mod:`opencas.service.upgrades`: the running CAS hands its key
only to a build the owner registered.
"""

from __future__ import annotations

from typing import Final

#: Lowercase hex measurements of the builds whose instances may hand this build the key.
PREDECESSORS: Final[tuple[str, ...]] = ()
