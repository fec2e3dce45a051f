"""Vector files and a local HTTPS server in the shape of Intel's PCS and AMD's KDS."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from opencas.collateral.http import HttpFetcher
from opencas.testing_https import Answer, FixedAnswersServer

DATA = Path(__file__).resolve().parents[2] / "data"
GO_TDX = DATA / "google-go-tdx-guest"
SNP = DATA / "trustee" / "snp"
PHALA = DATA / "phala-dcap-qvl"
CHIP_ID = (SNP / "test-report.bin").read_bytes()[0x1A0:0x1E0].hex()
TCB = "0300000000000873"


def pem_blocks_of(path: Path) -> list[str]:
    """The PEM blocks of ``path`` as text, in order."""
    text = path.read_text()
    marker = "-----END CERTIFICATE-----"
    return [block.strip() + "\n" + marker + "\n" for block in text.split(marker)[:-1]]


def encoded(path: Path) -> str:
    return urllib.parse.quote(path.read_text(), safe="")


def pcs_answers() -> dict[str, Answer]:
    """Intel PCS v4 answers for the go-tdx-guest TDX platform (FMSPC 50806F000000, Platform CA)."""
    pck_chain = encoded(GO_TDX / "go-tdx-guest_pck_crl_issuer_chain.pem")
    tcb_chain = encoded(GO_TDX / "go-tdx-guest_tcb_info_issuer_chain.pem")
    return {
        "/sgx/certification/v4/pckcrl?ca=platform&encoding=der": Answer(
            (GO_TDX / "pckcrl").read_bytes(), {"SGX-PCK-CRL-Issuer-Chain": pck_chain}
        ),
        "/tdx/certification/v4/tcb?fmspc=50806F000000": Answer(
            (GO_TDX / "sample_tcbInfo_response").read_bytes(), {"TCB-Info-Issuer-Chain": tcb_chain}
        ),
        "/tdx/certification/v4/qe/identity": Answer(
            (GO_TDX / "sample_qeIdentity_response").read_bytes(),
            {"SGX-Enclave-Identity-Issuer-Chain": tcb_chain},
        ),
        # A PCCS answers the root CA CRL as hex text.
        "/sgx/certification/v4/rootcacrl": Answer(
            (GO_TDX / "rootcrl.der").read_bytes().hex().encode()
        ),
    }


def kds_answers() -> dict[str, Answer]:
    """AMD KDS answers for the trustee Milan chip at TCB bl3/tee0/snp8/ucode115."""
    ask, ark, asvk = pem_blocks_of(SNP / "milan_ask_ark_asvk.pem")
    return {
        f"/vcek/v1/Milan/{CHIP_ID}?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115": Answer(
            (SNP / "test-vcek.der").read_bytes()
        ),
        "/vcek/v1/Milan/cert_chain": Answer((ask + ark).encode()),
        "/vlek/v1/Milan/cert_chain": Answer((asvk + ark).encode()),
    }


@pytest.fixture
def server() -> Iterator[FixedAnswersServer]:
    """A local HTTPS server answering as Intel's PCS and AMD's KDS would."""
    with FixedAnswersServer({**pcs_answers(), **kds_answers()}) as started:
        yield started


@pytest.fixture
def fetcher(server: FixedAnswersServer) -> Iterator[HttpFetcher]:
    """A fetcher that trusts ``server``."""
    with HttpFetcher(verify=server.client_context(), timeout=5.0) as made:
        yield made
