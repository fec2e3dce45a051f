"""Collateral sources: where the verifiers' documents come from (the I/O side of the seam).

The verifiers in :mod:`opencas.attestation` are pure: they ask a
:class:`~opencas.attestation.verifier.CollateralSource` for each document by its
:class:`~opencas.attestation.verifier.CollateralKey`. This package holds the sources: an offline
bundle directory (:mod:`.bundle`), Intel's PCS or a PCCS (:mod:`.pcs`), AMD's KDS (:mod:`.kds`),
a chain of sources tried in order (:mod:`.chain`), a cache in memory and on disk
(:mod:`.cache`), the HTTP client they share (:mod:`.http`) and the source a configuration
describes (:mod:`.configured`).
"""
