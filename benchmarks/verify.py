"""Benchmark evidence verification: each real TEE's verifier next to the bare cryptography it needs.

For Intel SGX and TDX quotes the bound is the bare ``dcap_qvl.verify_with_root_ca`` call on the
same quote and collateral (what OpenCAS adds: parsing the quote and the PCK chain, checking the
collateral's window, building the claims). For an AMD SEV-SNP report the bound is one raw ECDSA
P-384 verification of the report's signature plus a lookup of the already verified certificate
chain. The evidence and collateral are the real vectors in ``tests/data/`` at a time inside their
windows; the collateral is served from memory and the verifiers' caches are warm, as they are in a
running CAS after the first quote of a platform.

The two sides of each comparison run in alternating slices of ``--slice`` seconds, so that a
machine whose load changes during the run disturbs both alike. Prints the rates, the ratio and the
goal (at least 80% of the bound). Exit codes as every benchmark here (``benchmarks/common.py``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import dcap_qvl
from common import machine_line, main, number_option
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from opencas.attestation.amd_certificate import parse_amd_certificate
from opencas.attestation.dcap import INTEL_SGX_ROOT_CA_DER
from opencas.attestation.dcap_collateral import parse_collateral
from opencas.attestation.evidence import Evidence
from opencas.attestation.snp_report import parse_snp_report
from opencas.attestation.verifier import CollateralKey
from opencas.attestation.verify import verify_evidence

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
GOAL = 0.80
DCAP_AT = datetime(2025, 7, 1, tzinfo=UTC)
SNP_AT = datetime(2025, 6, 1, tzinfo=UTC)


class MemorySource:
    """Every collateral document of the vectors, by kind, served from memory."""

    def __init__(self, documents: dict[str, bytes]) -> None:
        self.documents = documents

    def collateral(self, key: CollateralKey, at: datetime) -> bytes:
        """The one document of ``key``'s kind, whatever its parameters (one platform each)."""
        return self.documents[key.kind]


def alternating_rates(
    first: Callable[[], object], second: Callable[[], object], seconds: float, slice_: float
) -> tuple[float, float]:
    """Calls per second of ``first`` and of ``second``, run in alternating slices."""
    first()
    second()
    counts = [0, 0]
    spent = [0.0, 0.0]
    operations = (first, second)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for index, operation in enumerate(operations):
            started = time.perf_counter()
            while True:
                for _ in range(8):
                    operation()
                counts[index] += 8
                elapsed = time.perf_counter() - started
                if elapsed >= slice_:
                    break
            spent[index] += elapsed
    return counts[0] / spent[0], counts[1] / spent[1]


def dcap_case(
    tee: str, quote_file: str, collateral_file: str
) -> tuple[Callable[[], object], Callable[[], object]]:
    """The verifier's call and the bare dcap-qvl call on one quote of the vectors."""
    raw = (DATA / "phala-dcap-qvl" / quote_file).read_bytes()
    document = (DATA / "phala-dcap-qvl" / collateral_file).read_bytes()
    evidence = Evidence("sgx-dcap" if tee == "sgx" else "tdx", raw)
    source = MemorySource({"dcap": document})
    collateral = parse_collateral(document, collateral_file, INTEL_SGX_ROOT_CA_DER).collateral
    now = int(DCAP_AT.timestamp())

    def ours() -> object:
        return verify_evidence(evidence, at=DCAP_AT, collateral=source)

    def bare() -> object:
        return dcap_qvl.verify_with_root_ca(raw, collateral, INTEL_SGX_ROOT_CA_DER, now)

    return ours, bare


def snp_case() -> tuple[Callable[[], object], Callable[[], object]]:
    """The verifier's call and one raw ECDSA P-384 check of the report plus a chain lookup."""
    folder = DATA / "trustee" / "snp"
    raw = (folder / "test-report.bin").read_bytes()
    vcek = (folder / "test-vcek.der").read_bytes()
    # The file holds ASK, ARK and ASVK; the VCEK's chain is the first two.
    pem = (folder / "milan_ask_ark_asvk.pem").read_bytes()
    end = b"-----END CERTIFICATE-----\n"
    ask_and_ark = end.join(pem.split(end)[:2]) + end
    source = MemorySource({"amd-vcek": vcek, "amd-chain": ask_and_ark})
    evidence = Evidence("snp", raw)
    report = parse_snp_report(raw)
    public_key = parse_amd_certificate(vcek, "VCEK").public_key
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    signature = encode_dss_signature(report.signature_r, report.signature_s)
    signed = report.signed_bytes
    verified_chains = {vcek: public_key}

    def ours() -> object:
        return verify_evidence(evidence, at=SNP_AT, collateral=source)

    def bare() -> object:
        key = verified_chains[vcek]
        key.verify(signature, signed, ec.ECDSA(hashes.SHA384()))
        return key

    return ours, bare


def measure(seconds: float, slice_: float) -> None:
    """Print each evidence type's rate next to its bound, and the verdicts."""
    print(machine_line("OpenCAS evidence verification benchmark"))
    cases = [
        (
            "SGX quote v3 (sgx-dcap)",
            "bare dcap-qvl verify",
            dcap_case("sgx", "sgx_quote", "sgx_quote_collateral.json"),
        ),
        (
            "TDX quote v4 (tdx)",
            "bare dcap-qvl verify",
            dcap_case("tdx", "tdx_quote", "tdx_quote_collateral.json"),
        ),
        ("SEV-SNP report v2 (snp)", "raw ECDSA P-384 verify + cached chain", snp_case()),
    ]
    verdicts = []
    print(f"\n  {'evidence':26} {'verifier/s':>11} {'bound/s':>10}  bound")
    for title, bound_name, (ours, bare) in cases:
        ours_rate, bare_rate = alternating_rates(ours, bare, seconds, slice_)
        print(f"  {title:26} {ours_rate:11,.0f} {bare_rate:10,.0f}  {bound_name}")
        share = ours_rate / bare_rate
        verdict = "met" if share >= GOAL else "NOT met"
        verdicts.append(f"  {title}: {share:.0%} of {bound_name} (goal >= {GOAL:.0%}: {verdict})")
    print("\nVerdicts:")
    print("\n".join(verdicts))


def run(_: Path) -> None:
    """Parse the options and measure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    number_option(parser, "--seconds", float, 600, 4.0, "seconds per evidence type")
    number_option(parser, "--slice", float, 5, 0.1, "seconds per alternating slice")
    options = parser.parse_args()
    measure(options.seconds, options.slice)


if __name__ == "__main__":
    sys.exit(main(run))
