"""The collateral sources against a local PCS/KDS: what they assemble, cache and refuse."""

from __future__ import annotations

import json
import socket
import threading
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from opencas.attestation.verifier import CollateralKey
from opencas.collateral.bundle import MAX_DOCUMENT_BYTES, BundleSource, bundle_path, check_key
from opencas.collateral.cache import CachedSource
from opencas.collateral.chain import SourceChain
from opencas.collateral.http import HttpFetcher
from opencas.collateral.kds import KdsSource, vcek_query
from opencas.collateral.pcs import INTEL_PCS_URL, PcsSource, pcs_base_url, raw_members
from opencas.collateral.validity import document_window
from opencas.errors import EvidenceError
from opencas.testing_https import Answer, FixedAnswersServer

from .conftest import CHIP_ID, GO_TDX, PHALA, SNP, TCB, encoded, pcs_answers, pem_blocks_of

TDX_KEY = CollateralKey.of("dcap", tee="tdx", fmspc="50806f000000", ca="platform")
VCEK_KEY = CollateralKey.of("amd-vcek", product="milan", chip_id=CHIP_ID, tcb=TCB)
CHAIN_KEY = CollateralKey.of("amd-chain", product="milan", signer="vcek")
VLEK_CHAIN_KEY = CollateralKey.of("amd-chain", product="milan", signer="vlek")
IN_WINDOW = datetime(2023, 7, 1, 1, 0, tzinfo=UTC)
TCB_PATH = "/tdx/certification/v4/tcb?fmspc=50806F000000"
QE_PATH = "/tdx/certification/v4/qe/identity"
QE_HEADER = "SGX-Enclave-Identity-Issuer-Chain"
PCK_PATH = "/sgx/certification/v4/pckcrl?ca=platform&encoding=der"
PCK_HEADER = "SGX-PCK-CRL-Issuer-Chain"
CHAIN = encoded(GO_TDX / "go-tdx-guest_pck_crl_issuer_chain.pem")


def test_pcs_assembles_the_collateral_json_the_bundle_holds(
    server: FixedAnswersServer, fetcher: HttpFetcher
) -> None:
    source = PcsSource(server.url + "/sgx/certification/v4/", fetcher, subscription_key="k3y")
    assembled = json.loads(source.collateral(TDX_KEY, IN_WINDOW))
    expected = json.loads((GO_TDX / "go-tdx-guest_v4_SPR_E4.collateral.dcapqvl.json").read_text())
    # The signed texts are kept byte for byte, so the signatures still verify.
    assert assembled == expected
    assert server.paths() == [
        "/sgx/certification/v4/pckcrl?ca=platform&encoding=der",
        "/tdx/certification/v4/tcb?fmspc=50806F000000",
        "/tdx/certification/v4/qe/identity",
        "/sgx/certification/v4/rootcacrl",
    ]
    assert all(h.get("Ocp-Apim-Subscription-Key") == "k3y" for _, h in server.requests)


def test_pcs_accepts_the_older_tcb_chain_header_and_a_pem_crl(
    server: FixedAnswersServer, fetcher: HttpFetcher
) -> None:
    tcb_path = "/tdx/certification/v4/tcb?fmspc=50806F000000"
    old = server.answers[tcb_path]
    server.answers[tcb_path] = Answer(
        old.body, {"SGX-TCB-Info-Issuer-Chain": old.headers["TCB-Info-Issuer-Chain"]}
    )
    crl_path = "/sgx/certification/v4/rootcacrl"
    der = (GO_TDX / "rootcrl.der").read_bytes()
    pem = x509.load_der_x509_crl(der).public_bytes(serialization.Encoding.PEM)
    server.answers[crl_path] = Answer(pem)
    assembled = json.loads(PcsSource(server.url, fetcher).collateral(TDX_KEY, IN_WINDOW))
    assert assembled["root_ca_crl"] == der.hex()
    assert "Ocp-Apim-Subscription-Key" not in server.requests[0][1]


@pytest.mark.parametrize(
    ("path", "answer", "message"),
    [
        ("/tdx/certification/v4/qe/identity", Answer(b"busy", status=503), "answered 503"),
        (TCB_PATH, Answer((GO_TDX / "sample_tcbInfo_response").read_bytes()), "no header"),
        (QE_PATH, Answer(b"[1]", {QE_HEADER: "x"}), "must be a JSON object"),
        (QE_PATH, Answer(b'{"signature": "00"}', {QE_HEADER: "x"}), "no member 'enclaveIdentity'"),
        (PCK_PATH, Answer(b"\x30\x01", {PCK_HEADER: "x"}), "not a URL-encoded PEM"),
        (PCK_PATH, Answer(b"<html>", {PCK_HEADER: CHAIN}), "not a CRL (DER, PEM or hex)"),
    ],
)
def test_pcs_errors_name_the_url_and_what_is_wrong(
    server: FixedAnswersServer, fetcher: HttpFetcher, path: str, answer: Answer, message: str
) -> None:
    server.answers[path] = answer
    with pytest.raises(EvidenceError) as caught:
        PcsSource(server.url, fetcher, subscription_key="s3cret").collateral(TDX_KEY, IN_WINDOW)
    assert caught.value.check == "collateral"
    assert server.url + path.split("?", maxsplit=1)[0] in caught.value.message
    assert message in caught.value.message
    assert "s3cret" not in caught.value.message


def test_pcs_refuses_a_tcb_info_of_another_fmspc(
    server: FixedAnswersServer, fetcher: HttpFetcher
) -> None:
    other = CollateralKey.of("dcap", tee="tdx", fmspc="00a067110000", ca="platform")
    server.answers["/tdx/certification/v4/tcb?fmspc=00A067110000"] = server.answers[
        "/tdx/certification/v4/tcb?fmspc=50806F000000"
    ]
    with pytest.raises(EvidenceError, match="for FMSPC '50806f000000', not 00a067110000"):
        PcsSource(server.url, fetcher).collateral(other, IN_WINDOW)


def test_fetcher_refuses_an_answer_over_its_size_limit(server: FixedAnswersServer) -> None:
    server.answers["/big"] = Answer(b"x" * 9000)
    with HttpFetcher(verify=server.client_context(), max_bytes=8192) as small:
        with pytest.raises(EvidenceError, match=r"/big: the answer is 9000 bytes, more than"):
            small.get(server.url + "/big")
        assert small.get(server.url + "/vcek/v1/Milan/cert_chain").body.count(b"BEGIN") == 2


def test_fetcher_names_an_untrusted_server() -> None:
    untrusted = r"https://127\.0\.0\.1:\d+/x: cannot be fetched"
    with (
        FixedAnswersServer() as server,
        HttpFetcher() as system_trust,
        pytest.raises(EvidenceError, match=untrusted),
    ):
        system_trust.get(server.url + "/x")


def test_fetcher_names_a_server_that_does_not_answer_in_time() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts the connection, never answers the TLS handshake
    try:
        with HttpFetcher(timeout=0.2) as fetcher:
            url = f"https://127.0.0.1:{listener.getsockname()[1]}/tcb"
            with pytest.raises(EvidenceError, match=r"/tcb: no answer within 0\.2 s"):
                fetcher.get(url)
    finally:
        listener.close()


def test_kds_fetches_the_vcek_and_both_chains(
    server: FixedAnswersServer, fetcher: HttpFetcher
) -> None:
    kds = KdsSource(fetcher, server.url)
    assert kds.collateral(VCEK_KEY, IN_WINDOW) == (SNP / "test-vcek.der").read_bytes()
    ask, ark, asvk = pem_blocks_of(SNP / "milan_ask_ark_asvk.pem")
    assert kds.collateral(CHAIN_KEY, IN_WINDOW).decode() == ask + ark
    assert kds.collateral(VLEK_CHAIN_KEY, IN_WINDOW).decode() == asvk + ark
    vlek = CollateralKey.of("amd-vlek", product="milan", tcb=TCB)
    with pytest.raises(EvidenceError, match="VCEKs and AMD certificate chains only"):
        kds.collateral(vlek, IN_WINDOW)


def test_vcek_query_reads_the_tcb_bytes_per_product() -> None:
    assert vcek_query("milan", TCB) == "blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115"
    assert vcek_query("turin", "0102030400000005") == (
        "fmcSPL=01&blSPL=02&teeSPL=03&snpSPL=04&ucodeSPL=05"
    )
    turin = CollateralKey.of("amd-vcek", product="turin", chip_id="aa" * 64, tcb="01" * 8)
    assert KdsSource(HttpFetcher()).url(turin) == (
        "https://kdsintf.amd.com/vcek/v1/Turin/"
        + "aa" * 8
        + "?fmcSPL=01&blSPL=01&teeSPL=01&snpSPL=01&ucodeSPL=01"
    )


def test_kds_refuses_an_answer_that_is_not_a_certificate(
    server: FixedAnswersServer, fetcher: HttpFetcher
) -> None:
    server.answers["/vcek/v1/Milan/cert_chain"] = Answer(b"<html>maintenance</html>")
    with pytest.raises(EvidenceError, match=r"/vcek/v1/Milan/cert_chain: the answer is not what"):
        KdsSource(fetcher, server.url).collateral(CHAIN_KEY, IN_WINDOW)


def test_cache_reuses_a_document_while_it_is_current_in_memory_and_on_disk(
    server: FixedAnswersServer, fetcher: HttpFetcher, tmp_path: Path
) -> None:
    upstream = SourceChain([PcsSource(server.url, fetcher), KdsSource(fetcher, server.url)])
    cached = CachedSource(upstream, tmp_path / "cache")
    first = cached.collateral(TDX_KEY, IN_WINDOW)
    vcek = cached.collateral(VCEK_KEY, IN_WINDOW)
    asked = len(server.requests)
    assert cached.collateral(TDX_KEY, IN_WINDOW) == first
    assert cached.collateral(VCEK_KEY, IN_WINDOW) == vcek
    assert len(server.requests) == asked
    assert (tmp_path / "cache" / bundle_path(TDX_KEY)).read_bytes() == first
    # A new process finds it on disk.
    restarted = CachedSource(upstream, tmp_path / "cache")
    assert restarted.collateral(TDX_KEY, IN_WINDOW) == first
    assert len(server.requests) == asked
    # Once the earliest nextUpdate (QE identity, 2023-07-08T07:24:59Z) has passed, it asks again.
    later = datetime(2023, 7, 8, 7, 25, tzinfo=UTC)
    assert restarted.collateral(TDX_KEY, later) == first
    assert len(server.requests) == asked + 4


def test_cache_is_bounded_and_does_not_keep_outdated_answers(
    server: FixedAnswersServer, fetcher: HttpFetcher
) -> None:
    cached = CachedSource(KdsSource(fetcher, server.url), max_documents=1)
    cached.collateral(CHAIN_KEY, IN_WINDOW)
    cached.collateral(VLEK_CHAIN_KEY, IN_WINDOW)
    cached.collateral(CHAIN_KEY, IN_WINDOW)
    assert server.paths().count("/vcek/v1/Milan/cert_chain") == 2
    after_vcek = datetime(2030, 2, 1, tzinfo=UTC)  # the VCEK expired 2030-01-24
    cached.collateral(VCEK_KEY, after_vcek)
    cached.collateral(VCEK_KEY, after_vcek)
    assert sum(path.startswith("/vcek/v1/Milan/" + CHIP_ID) for path in server.paths()) == 2


def test_cache_serves_concurrent_readers(server: FixedAnswersServer, fetcher: HttpFetcher) -> None:
    cached = CachedSource(KdsSource(fetcher, server.url))
    cached.collateral(CHAIN_KEY, IN_WINDOW)
    results: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: results.append(cached.collateral(CHAIN_KEY, IN_WINDOW)))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [results[0]] * 8
    assert server.paths().count("/vcek/v1/Milan/cert_chain") == 1


def test_bundle_reads_by_key_and_names_the_missing_file(tmp_path: Path) -> None:
    bundle = BundleSource(tmp_path)
    key = CollateralKey.of("dcap", tee="sgx", fmspc="00a067110000", ca="processor")
    data = (PHALA / "sgx_quote_collateral.json").read_bytes()
    written = bundle.write(key, data)
    assert written == tmp_path / "dcap" / "sgx" / "00a067110000-processor.json"
    assert bundle.collateral(key, IN_WINDOW) == data
    with pytest.raises(EvidenceError, match=r"amd-vcek\(.*vcek/.*-0300000000000873\.der does not"):
        bundle.collateral(VCEK_KEY, IN_WINDOW)
    big = tmp_path / bundle_path(CHAIN_KEY)
    big.parent.mkdir(parents=True)
    big.write_bytes(b"x" * (MAX_DOCUMENT_BYTES + 1))
    with pytest.raises(EvidenceError, match="larger than the limit"):
        bundle.collateral(CHAIN_KEY, IN_WINDOW)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (CollateralKey.of("dcap", tee="sgx", fmspc="../../etc/x", ca="processor"), "fmspc"),
        (CollateralKey.of("dcap", tee="sev", fmspc="00a067110000", ca="processor"), "tee"),
        (CollateralKey.of("dcap", tee="sgx", fmspc="00A067110000", ca="processor"), "lowercase"),
        (CollateralKey.of("dcap", tee="sgx", fmspc="00a067110000"), "needs the parameters"),
        (CollateralKey.of("amd-vcek", product="milan", chip_id="a" * 129, tcb=TCB), "chip_id"),
        (CollateralKey.of("pck-cert", fmspc="00"), "unknown collateral kind"),
    ],
)
def test_keys_from_unverified_evidence_are_checked_before_they_name_a_file(
    key: CollateralKey, message: str
) -> None:
    with pytest.raises(EvidenceError, match=message) as caught:
        check_key(key)
    assert caught.value.check == "collateral"


def test_chain_tries_each_source_and_says_why_each_failed(
    server: FixedAnswersServer, fetcher: HttpFetcher, tmp_path: Path
) -> None:
    chain = SourceChain([BundleSource(tmp_path), KdsSource(fetcher, server.url)])
    assert chain.collateral(CHAIN_KEY, IN_WINDOW).count(b"BEGIN") == 2
    with pytest.raises(EvidenceError) as caught:
        chain.collateral(TDX_KEY, IN_WINDOW)
    message = caught.value.message
    assert str(tmp_path / bundle_path(TDX_KEY)) + " does not exist" in message
    assert "VCEKs and AMD certificate chains only" in message


def test_windows_of_each_kind() -> None:
    sgx = CollateralKey.of("dcap", tee="sgx", fmspc="00a067110000", ca="processor")
    window = document_window(sgx, (PHALA / "sgx_quote_collateral.json").read_bytes())
    assert window.not_before == datetime(2025, 6, 19, 10, 56, 11, tzinfo=UTC)
    assert window.not_after == datetime(2025, 7, 19, 10, 1, 18, tzinfo=UTC)
    vcek = document_window(VCEK_KEY, (SNP / "test-vcek.der").read_bytes())
    assert (vcek.not_before.year, vcek.not_after.year) == (2023, 2030)
    with pytest.raises(ValueError, match="no string member"):
        document_window(sgx, b"{}")


def test_raw_members_keep_the_exact_text() -> None:
    text = ' { "a" : {"x": 1.0,  "y":[ ]} , "b":"s" } '
    assert raw_members(text) == {"a": '{"x": 1.0,  "y":[ ]}', "b": '"s"'}
    with pytest.raises(ValueError, match="twice"):
        raw_members('{"a":1,"a":2}')
    with pytest.raises(ValueError, match="after the JSON object"):
        raw_members('{"a":1} x')


def test_pcs_base_url_forms() -> None:
    assert pcs_base_url("https://p:8081/sgx/certification/v4/") == "https://p:8081"
    assert pcs_base_url("https://p:8081/tdx/certification/v4") == "https://p:8081"
    assert pcs_base_url("https://p:8081/") == "https://p:8081"


def _mock_fetcher(answers: dict[str, Answer], asked: list[str]) -> HttpFetcher:
    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        found = answers.get(str(request.url), Answer(b"gone", status=404))
        return httpx.Response(found.status, headers=dict(found.headers), content=found.body)

    return HttpFetcher(transport=httpx.MockTransport(answer))


ROOT_CRL_POINT = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"


def test_from_intel_pcs_the_root_ca_crl_comes_from_the_root_certificates_crl_point() -> None:
    answers = {f"{INTEL_PCS_URL}{path}": answer for path, answer in pcs_answers().items()}
    root_crl = (GO_TDX / "rootcrl.der").read_bytes()
    answers[ROOT_CRL_POINT] = Answer(root_crl)
    asked: list[str] = []
    with _mock_fetcher(answers, asked) as fetcher:
        document = PcsSource(INTEL_PCS_URL, fetcher).collateral(TDX_KEY, IN_WINDOW)
    assert json.loads(document)["root_ca_crl"] == root_crl.hex()
    assert asked[-1] == ROOT_CRL_POINT
    assert not any(url.endswith("/rootcacrl") for url in asked)


def test_a_pccs_without_rootcacrl_falls_back_to_the_crl_point_and_names_both() -> None:
    pccs = "https://pccs.invalid:8081"
    answers = {f"{pccs}{path}": answer for path, answer in pcs_answers().items()}
    del answers[f"{pccs}/sgx/certification/v4/rootcacrl"]
    asked: list[str] = []
    with _mock_fetcher(answers, asked) as fetcher, pytest.raises(EvidenceError) as caught:
        PcsSource(pccs, fetcher).collateral(TDX_KEY, IN_WINDOW)
    assert f"{pccs}/sgx/certification/v4/rootcacrl: the server answered 404" in str(caught.value)
    assert f"{ROOT_CRL_POINT}: the server answered 404" in str(caught.value)
    answers[ROOT_CRL_POINT] = Answer((GO_TDX / "rootcrl.der").read_bytes())
    with _mock_fetcher(answers, asked) as fetcher:
        assert PcsSource(pccs, fetcher).collateral(TDX_KEY, IN_WINDOW)


def test_chain_prefers_a_current_document_to_an_outdated_bundle(
    server: FixedAnswersServer, fetcher: HttpFetcher, tmp_path: Path
) -> None:
    outdated = BundleSource(tmp_path)
    outdated.write(
        TDX_KEY, (GO_TDX / "go-tdx-guest_v4_SPR_E4.collateral.dcapqvl.json").read_bytes()
    )
    chain = SourceChain([outdated, PcsSource(server.url, fetcher)])
    assert chain.collateral(TDX_KEY, IN_WINDOW) == outdated.collateral(TDX_KEY, IN_WINDOW)
    assert server.requests == []
    # Later than its window, the PCCS is asked; it has nothing newer, so the bundle's stands.
    later = datetime(2024, 1, 1, tzinfo=UTC)
    assert chain.collateral(TDX_KEY, later) == outdated.collateral(TDX_KEY, later)
    assert len(server.requests) == 4
