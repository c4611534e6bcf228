"""The HTTP API through a real uvicorn server on 127.0.0.1: queries, bad requests, auth,
concurrent clients. The datastore holds real Brown paragraphs embedded with MiniLM."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pyarrow as pa
import pytest

from gristmill.inference import Embedder, EmbedderConfig
from gristmill.retrieval.postprocess import SearchOptions
from gristmill.retrieval.retriever import Retriever
from gristmill.retrieval.server import ServerConfig, create_app
from gristmill.sources import resolve
from gristmill.storage.datastore import IndexSpec, build_from_arrays

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PARAGRAPHS = 120

pytestmark = pytest.mark.slow


def brown_paragraphs(limit: int) -> list[str]:
    out: list[str] = []
    for line in resolve("brown").files[0].read_text().splitlines():
        for para in json.loads(line)["text"].split("\n\n"):
            if len(para.split()) >= 30:
                out.append(" ".join(para.split()))
            if len(out) == limit:
                return out
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[str, list[str]]]:
    import uvicorn

    texts = brown_paragraphs(PARAGRAPHS)
    config = EmbedderConfig(max_seq_length=128)
    vectors = Embedder(config).embed(texts)
    table = pa.table({"id": [f"b{i}" for i in range(len(texts))], "text": texts})
    uri = str(tmp_path_factory.mktemp("api") / "ds")
    half = len(texts) // 2
    build_from_arrays(uri, IndexSpec(), {0: (vectors[:half], table.slice(0, half)),
                                         1: (vectors[half:], table.slice(half))},
                      embedder=config.model_dump(mode="json"))
    retriever = Retriever.open(uri)
    port = free_port()
    settings = ServerConfig(port=port, token=TOKEN, max_batch=8, max_k=10,
                            max_query_chars=500)
    server = uvicorn.Server(uvicorn.Config(create_app(retriever, settings), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", texts
    server.should_exit = True
    thread.join(timeout=10)
    retriever.close()


def test_health_reports_the_datastore(served) -> None:
    base, texts = served
    body = httpx.get(f"{base}/health").json()
    assert body == {"status": "ok", "shards": 2, "vectors": len(texts), "index": "flat",
                    "dim": 384}


def test_a_paragraph_finds_itself_first(served) -> None:
    base, texts = served
    query = " ".join(texts[77].split()[:12])  # under 13 words: not decontaminated
    response = httpx.post(f"{base}/search", json={"queries": query, "k": 3}, headers=AUTH)
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 1 and results[0]["query"] == query
    hits = results[0]["hits"]
    assert hits[0]["id"] == "b77" and hits[0]["shard_id"] == 1
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert len(hits) == 3


def test_batch_of_queries_and_options(served) -> None:
    base, texts = served
    queries = [" ".join(texts[i].split()[:10]) for i in (3, 50, 90)]
    response = httpx.post(f"{base}/search", headers=AUTH, json={
        "queries": queries, "k": 5, "options": {"candidates": 20, "dedup": False}})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["hits"][0]["id"] for r in results] == ["b3", "b50", "b90"]
    assert all(len(r["hits"]) == 5 for r in results)


def test_eval_texts_decontaminate(served) -> None:
    base, texts = served
    query = " ".join(texts[10].split()[:12])
    response = httpx.post(f"{base}/search", headers=AUTH,
                          json={"queries": query, "k": 3, "eval_texts": [texts[10]]})
    assert "b10" not in [h["id"] for h in response.json()["results"][0]["hits"]]


@pytest.mark.parametrize(("body", "status", "message"), [
    ({}, 422, "queries"),
    ({"queries": []}, 400, "queries is empty"),
    ({"queries": ["  "]}, 400, "blank"),
    ({"queries": ["q"] * 9}, 400, "at most 8 per request"),
    ({"queries": "x" * 501}, 400, "exceed 500 characters"),
    ({"queries": "q", "k": 11}, 400, "at most 10"),
    ({"queries": "q", "k": 0}, 422, "k"),
    ({"queries": 5}, 422, "queries"),
    ({"queries": "q", "colour": "red"}, 422, "colour"),
    ({"queries": "q", "options": {"nprobe": -1}}, 422, "nprobe"),
    ({"queries": "q", "options": {"no_such": 1}}, 422, "no_such"),
    ({"queries": "q", "options": {"candidates": 5000}}, 400, "at most 1000"),
    ({"queries": "q", "options": {"k": 2}}, 400, "top level"),
])
def test_bad_requests_get_clear_4xx(served, body, status, message) -> None:
    base, _ = served
    response = httpx.post(f"{base}/search", json=body, headers=AUTH)
    assert response.status_code == status
    assert message in response.text


def test_malformed_json_is_422(served) -> None:
    base, _ = served
    response = httpx.post(f"{base}/search", content=b"{not json",
                          headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 422


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": TOKEN}])
def test_missing_or_wrong_token_is_401(served, headers) -> None:
    base, _ = served
    response = httpx.post(f"{base}/search", json={"queries": "q"}, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


def test_concurrent_clients_get_the_same_answers_as_one(served) -> None:
    base, texts = served
    queries = [" ".join(texts[i].split()[:10]) for i in range(0, PARAGRAPHS, 10)]

    def ask(query: str) -> list[str]:
        with httpx.Client(base_url=base, headers=AUTH, timeout=60) as client:
            response = client.post("/search", json={"queries": query, "k": 3})
            assert response.status_code == 200
            return [h["id"] for h in response.json()["results"][0]["hits"]]

    alone = [ask(q) for q in queries]
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(ask, queries * 3))
    assert together == alone * 3


def test_an_exposed_server_needs_a_real_token() -> None:
    with pytest.raises(ValueError, match="exposes the API beyond this machine"):
        ServerConfig(host="0.0.0.0")
    with pytest.raises(ValueError, match="at least 8 characters"):
        ServerConfig(token="")
    assert ServerConfig(host="0.0.0.0", token="long-enough-token").host == "0.0.0.0"


def test_request_options_are_bounded() -> None:
    with pytest.raises(ValueError, match="minhash_perms"):
        SearchOptions(minhash_perms=10**9)
