"""TLS and mutual TLS. The option checks need no server. The live tests run against an
`https://` DEEPRECALL_ENDPOINT whose certificate the CA in DEEPRECALL_TLS_CA (a PEM file)
signed; with DEEPRECALL_TLS_CLIENT_CERT and DEEPRECALL_TLS_CLIENT_KEY, the server requires that
client certificate (mutual TLS). DEEPRECALL_API_KEY, when set, goes with every call too.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import grpc
import pytest

from deeprecall_client import AsyncClient, Client, DeepRecallError, pb

ENDPOINT = os.environ.get("DEEPRECALL_ENDPOINT", "")
API_KEY = os.environ.get("DEEPRECALL_API_KEY") or None
CA_FILE = os.environ.get("DEEPRECALL_TLS_CA") or None
CERT_FILE = os.environ.get("DEEPRECALL_TLS_CLIENT_CERT") or None
KEY_FILE = os.environ.get("DEEPRECALL_TLS_CLIENT_KEY") or None
QUESTION = "Which city is the maker of the Aurora Strip controller board headquartered in?"
DOCUMENTS = [
    {
        "id": "aurora-strip",
        "content": "The Aurora Strip controller board is manufactured by Kestrel Fabrication.",
    },
    {"id": "kestrel", "content": "Kestrel Fabrication is headquartered in Tampere, Finland."},
]

live = pytest.mark.skipif(
    not (CA_FILE and ENDPOINT.startswith("https://")),
    reason="needs an https:// DEEPRECALL_ENDPOINT and its CA in DEEPRECALL_TLS_CA",
)
mutual = pytest.mark.skipif(
    not (CERT_FILE and KEY_FILE),
    reason="needs a client certificate in DEEPRECALL_TLS_CLIENT_CERT and _KEY",
)


def pem(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def assert_refused_in_the_handshake(error: DeepRecallError) -> None:
    # The handshake fails, so no call reaches the server's key check (which would answer
    # UNAUTHENTICATED).
    assert error.code == grpc.StatusCode.UNAVAILABLE, error


@pytest.mark.parametrize("target", ["http://127.0.0.1:50051", "127.0.0.1:50051"])
def test_tls_options_need_an_https_target(target: str) -> None:
    message = r"TLS options \(root_certificates\) need an https:// target"
    with pytest.raises(ValueError, match=message):
        Client(target, root_certificates=b"-----BEGIN CERTIFICATE-----")
    with pytest.raises(ValueError, match="https:// target"):
        AsyncClient(target, certificate_chain=b"cert", private_key=b"key")


def test_a_client_certificate_needs_its_key() -> None:
    with pytest.raises(ValueError, match="certificate_chain and private_key go together"):
        Client("https://127.0.0.1:50051", certificate_chain=b"cert")
    with pytest.raises(ValueError, match="certificate_chain and private_key go together"):
        AsyncClient("https://127.0.0.1:50051", private_key=b"key")


def test_the_pem_options_take_bytes_not_paths() -> None:
    with pytest.raises(TypeError, match="root_certificates takes PEM bytes"):
        Client("https://127.0.0.1:50051", root_certificates="ca.crt")  # type: ignore[arg-type]


def test_credentials_exclude_the_pem_options() -> None:
    with pytest.raises(ValueError, match="either credentials or root_certificates"):
        Client(
            "https://127.0.0.1:50051",
            credentials=grpc.ssl_channel_credentials(),
            root_certificates=b"-----BEGIN CERTIFICATE-----",
        )


@live
def test_calls_succeed_over_tls_with_the_ca_and_the_client_certificate() -> None:
    with Client(
        ENDPOINT,
        api_key=API_KEY,
        root_certificates=pem(CA_FILE),
        certificate_chain=pem(CERT_FILE),
        private_key=pem(KEY_FILE),
        timeout=60,
    ) as client:
        added = client.add_documents(DOCUMENTS, collection="py-tls")
        assert added.document_count == 2
        events: list[pb.QueryEvent] = []
        result = client.query(QUESTION, collection="py-tls", on_event=events.append)
        assert "Tampere" in result.answer, result.answer
        assert set(result.citations) == {"aurora-strip", "kestrel"}, result.citations
        assert events[-1].WhichOneof("event") == "result"
        stats = client.get_stats()
        assert any(c.name == "py-tls" and c.document_count == 2 for c in stats.collections)


@live
def test_the_async_client_calls_over_tls_with_the_same_options() -> None:
    async def scenario() -> None:
        async with AsyncClient(
            ENDPOINT,
            api_key=API_KEY,
            root_certificates=pem(CA_FILE),
            certificate_chain=pem(CERT_FILE),
            private_key=pem(KEY_FILE),
            timeout=60,
        ) as client:
            await client.add_documents(DOCUMENTS, collection="py-tls-async")
            result = await client.query(QUESTION, collection="py-tls-async")
            assert "Tampere" in result.answer, result.answer

    asyncio.run(scenario())


@live
def test_without_the_ca_the_server_certificate_is_not_trusted() -> None:
    # An https:// target with no CA given checks the server against the system's roots, which
    # do not include the private CA that signed it.
    with Client(
        ENDPOINT,
        api_key=API_KEY,
        certificate_chain=pem(CERT_FILE),
        private_key=pem(KEY_FILE),
        timeout=30,
    ) as client:
        with pytest.raises(DeepRecallError) as raised:
            client.get_stats()
    assert_refused_in_the_handshake(raised.value)


@live
@mutual
def test_without_the_client_certificate_the_server_refuses_the_connection() -> None:
    with Client(ENDPOINT, api_key=API_KEY, root_certificates=pem(CA_FILE), timeout=30) as client:
        with pytest.raises(DeepRecallError) as raised:
            client.get_stats()
    assert_refused_in_the_handshake(raised.value)

    async def scenario() -> DeepRecallError:
        async with AsyncClient(
            ENDPOINT, api_key=API_KEY, root_certificates=pem(CA_FILE), timeout=30
        ) as client:
            with pytest.raises(DeepRecallError) as raised:
                await client.get_stats()
            return raised.value

    assert_refused_in_the_handshake(asyncio.run(scenario()))
