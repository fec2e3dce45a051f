"""What a collateral lookup costs: fetched from a PCCS, found on disk, found in memory.

A local HTTPS server (``opencas.testing_https``) answers as Intel's PCS would, with the real
go-tdx-guest answers from ``tests/data`` (so run it from a checkout). Three figures for one DCAP
collateral set (TDX, FMSPC 50806F000000): a fetch through the cache (four GETs on one pooled
connection, the JSON assembled), a lookup that finds the document in the cache directory (a new
cache each time: file read, window parsed), and a lookup that finds it in memory; each against
the bound it should stay under so that collateral is never what limits an attestation.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from opencas.attestation.verifier import CollateralKey
from opencas.collateral.cache import CachedSource
from opencas.collateral.http import HttpFetcher
from opencas.collateral.pcs import PcsSource
from opencas.testing_https import Answer, FixedAnswersServer

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "google-go-tdx-guest"
KEY = CollateralKey.of("dcap", tee="tdx", fmspc="50806f000000", ca="platform")
AT = datetime(2023, 7, 1, tzinfo=UTC)
BOUNDS = {"fetch": 0.050, "disk": 0.005, "memory": 0.000_050}


def _answers() -> dict[str, Answer]:
    def chain(name: str) -> str:
        return urllib.parse.quote((DATA / name).read_text(), safe="")

    pck, tcb = (
        chain("go-tdx-guest_pck_crl_issuer_chain.pem"),
        chain("go-tdx-guest_tcb_info_issuer_chain.pem"),
    )
    return {
        "/sgx/certification/v4/pckcrl?ca=platform&encoding=der": Answer(
            (DATA / "pckcrl").read_bytes(), {"SGX-PCK-CRL-Issuer-Chain": pck}
        ),
        "/tdx/certification/v4/tcb?fmspc=50806F000000": Answer(
            (DATA / "sample_tcbInfo_response").read_bytes(), {"TCB-Info-Issuer-Chain": tcb}
        ),
        "/tdx/certification/v4/qe/identity": Answer(
            (DATA / "sample_qeIdentity_response").read_bytes(),
            {"SGX-Enclave-Identity-Issuer-Chain": tcb},
        ),
        "/sgx/certification/v4/rootcacrl": Answer(
            (DATA / "rootcrl.der").read_bytes().hex().encode()
        ),
    }


def _per_call(run: Callable[[], object], count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        run()
    return (time.perf_counter() - start) / count


def main() -> int:
    """Measure and print; exit 1 when the vectors are missing."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="lookups per figure")
    count = parser.parse_args().count
    if not DATA.is_dir():
        print(f"collateral: {DATA} is missing; run from an OpenCAS checkout", file=sys.stderr)
        return 1
    with (
        FixedAnswersServer(_answers()) as server,
        HttpFetcher(verify=server.client_context()) as fetcher,
        tempfile.TemporaryDirectory() as directory,
    ):
        pcs = PcsSource(server.url, fetcher)
        fetch = _per_call(lambda: CachedSource(pcs).collateral(KEY, AT), max(count // 10, 5))
        cache = Path(directory)
        CachedSource(pcs, cache).collateral(KEY, AT)
        disk = _per_call(lambda: CachedSource(pcs, cache).collateral(KEY, AT), count)
        warm = CachedSource(pcs, cache)
        warm.collateral(KEY, AT)
        memory = _per_call(lambda: warm.collateral(KEY, AT), count * 100)
    for name, seconds in (("fetch", fetch), ("disk", disk), ("memory", memory)):
        verdict = "ok" if seconds <= BOUNDS[name] else "OVER"
        print(
            f"{name:>6}: {seconds * 1e6:10.1f} µs per lookup "
            f"(bound {BOUNDS[name] * 1e6:.0f} µs: {verdict})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
