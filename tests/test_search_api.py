"""The HTTP API through a real uvicorn server on 127.0.0.1: queries, bad requests, auth,
concurrent clients sharing embedding calls. The datastore holds real Brown paragraphs
embedded with MiniLM; the batcher's own tests use a stand-in embedder and need no model."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

import httpx
import numpy as np
import pyarrow as pa
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from gristmill.inference import Embedder, EmbedderConfig
from gristmill.retrieval.datastore import IndexSpec, build_from_arrays
from gristmill.retrieval.embed_batcher import EmbedBatcher, EmbedFn
from gristmill.retrieval.postprocess import SearchOptions
from gristmill.retrieval.retriever import Retriever
from gristmill.retrieval.server import ServerConfig, serve_in_thread
from gristmill.sources import resolve

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PARAGRAPHS = 120
SETTINGS = ServerConfig(port=0, token=TOKEN, max_batch=8, max_k=10, max_query_chars=500,
                        max_rerank_depth=200)


class Served(NamedTuple):
    base: str
    texts: list[str]
    retriever: Retriever


class Fatal(BaseException):
    """Not an Exception: what would kill the batcher's thread (as SystemExit would)."""


class StandIn:
    """Text "2.5" embeds to [2.5]; a call holding "bad" fails, one holding "fatal" raises
    Fatal; the first call can be held."""

    def __init__(self, *, hold_first: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        if not hold_first:
            self.gate.set()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        self.entered.set()
        assert self.gate.wait(30), "the test never let the first call finish"
        if "bad" in texts:
            raise RuntimeError("model exploded")
        if "fatal" in texts:
            raise Fatal("thread killed")
        return np.array([[float(t)] for t in texts], np.float32)


class Recording:
    """Wraps the real embedder: records each call and can be told to fail, always or on a
    call holding the `poison` text."""

    def __init__(self, embed: EmbedFn) -> None:
        self.inner = embed
        self.calls: list[list[str]] = []
        self.fail = False
        self.poison: str | None = None

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        if self.fail or self.poison in texts:
            raise RuntimeError("model exploded")
        return self.inner(texts)


def brown_paragraphs(limit: int) -> list[str]:
    out: list[str] = []
    for line in resolve("brown").files[0].read_text().splitlines():
        for para in json.loads(line)["text"].split("\n\n"):
            if len(para.split()) >= 30:
                out.append(" ".join(para.split()))
            if len(out) == limit:
                return out
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
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
    with serve_in_thread(retriever, SETTINGS) as base:
        yield Served(base, texts, retriever)
    retriever.close()


@pytest.mark.slow
def test_health_reports_the_datastore(served) -> None:
    base, texts, _ = served
    body = httpx.get(f"{base}/health").json()
    assert body == {"status": "ok", "shards": 2, "vectors": len(texts), "index": "flat",
                    "dim": 384}


@pytest.mark.slow
def test_a_paragraph_finds_itself_first(served) -> None:
    base, texts, _ = served
    query = " ".join(texts[77].split()[:12])  # under 13 words: not decontaminated
    response = httpx.post(f"{base}/search", json={"queries": query, "k": 3}, headers=AUTH)
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 1 and results[0]["query"] == query
    hits = results[0]["hits"]
    assert hits[0]["id"] == "b77" and hits[0]["shard_id"] == 1
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert len(hits) == 3


@pytest.mark.slow
def test_batch_of_queries_and_options(served) -> None:
    base, texts, _ = served
    queries = [" ".join(texts[i].split()[:10]) for i in (3, 50, 90)]
    response = httpx.post(f"{base}/search", headers=AUTH, json={
        "queries": queries, "k": 5, "options": {"candidates": 20, "dedup": False}})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["hits"][0]["id"] for r in results] == ["b3", "b50", "b90"]
    assert all(len(r["hits"]) == 5 for r in results)


@pytest.mark.slow
def test_eval_texts_decontaminate(served) -> None:
    base, texts, _ = served
    query = " ".join(texts[10].split()[:12])
    response = httpx.post(f"{base}/search", headers=AUTH,
                          json={"queries": query, "k": 3, "eval_texts": [texts[10]]})
    assert "b10" not in [h["id"] for h in response.json()["results"][0]["hits"]]


@pytest.mark.slow
@pytest.mark.parametrize(("body", "message"), [
    ({}, "queries"),
    ({"queries": []}, "at least 1 item"),
    ({"queries": ""}, "at least 1 character"),
    ({"queries": ["  "]}, "should match pattern"),
    ({"queries": ["q"] * 9}, "at most 8 items"),
    ({"queries": "x" * 501}, "at most 500 characters"),
    ({"queries": "q", "k": 11}, "less than or equal to 10"),
    ({"queries": "q", "k": 0}, "greater than or equal to 1"),
    ({"queries": 5}, "queries"),
    ({"queries": "q", "colour": "red"}, "colour"),
    ({"queries": "q", "options": {"nprobe": -1}}, "nprobe"),
    ({"queries": "q", "options": {"no_such": 1}}, "no_such"),
    ({"queries": "q", "options": {"candidates": 5000}}, "less than or equal to 1000"),
    ({"queries": "q", "options": {"k": 2}}, "Extra inputs"),
    ({"queries": ["fine", "jury \ud800 election"]}, "lone surrogate U+D800"),
    ({"queries": "q", "eval_texts": ["\udfff"]}, "lone surrogate U+DFFF"),
    ({"queries": "q", "options": {"rerank": True, "rerank_depth": 1000}},
     "less than or equal to 200"),
])
def test_bad_requests_get_a_422_naming_the_problem(served, body, message) -> None:
    """The server's limits are in the request schema, so every refusal has one shape."""
    base, _, _ = served
    response = post_json(f"{base}/search", body)
    assert response.status_code == 422
    assert message in response.text


@pytest.mark.slow
def test_malformed_json_is_422(served) -> None:
    base, _, _ = served
    response = httpx.post(f"{base}/search", content=b"{not json",
                          headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 422


@pytest.mark.slow
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": TOKEN}])
def test_missing_or_wrong_token_is_401(served, headers) -> None:
    base, _, _ = served
    response = httpx.post(f"{base}/search", json={"queries": "q"}, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.slow
def test_concurrent_clients_get_the_same_answers_as_one(served) -> None:
    base, texts, _ = served
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


def post_json(url: str, body: dict) -> httpx.Response:
    """POST `body` as ASCII JSON, as any client may: a lone surrogate travels as an escape
    (httpx's own encoder would refuse it before sending)."""
    return httpx.post(url, content=json.dumps(body),
                      headers={**AUTH, "Content-Type": "application/json"}, timeout=60)


def post(base: str, query: str) -> httpx.Response:
    return httpx.post(f"{base}/search", headers=AUTH, json={"queries": query, "k": 3},
                      timeout=60)


def hit_ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [h["id"] for h in response.json()["results"][0]["hits"]]


def post_together(base: str, queries: list[str]) -> list[httpx.Response]:
    with ThreadPoolExecutor(max_workers=len(queries)) as pool:
        return list(pool.map(lambda q: post(base, q), queries))


@pytest.mark.slow
def test_concurrent_requests_share_embedding_calls(served, monkeypatch) -> None:
    shared_base, texts, retriever = served
    queries = [" ".join(texts[i].split()[:10]) for i in range(0, 80, 10)]
    alone = [hit_ids(post(shared_base, q)) for q in queries]
    recording = Recording(retriever.embed)
    monkeypatch.setattr(retriever, "embed", recording)
    settings = SETTINGS.with_(batch_wait_ms=1000, max_embed_batch=len(queries))
    with serve_in_thread(retriever, settings) as base:
        together = [hit_ids(r) for r in post_together(base, queries)]
    assert together == alone
    assert len({ids[0] for ids in alone}) == len(queries)  # a mixed-up row would show
    assert sorted(t for call in recording.calls for t in call) == sorted(queries)
    assert len(recording.calls) < len(queries)


@pytest.mark.slow
def test_an_embedding_failure_is_a_500_for_every_waiting_request(served, monkeypatch) -> None:
    _, texts, retriever = served
    recording = Recording(retriever.embed)
    monkeypatch.setattr(retriever, "embed", recording)
    queries = [" ".join(texts[i].split()[:10]) for i in (5, 15, 25, 35)]
    settings = SETTINGS.with_(batch_wait_ms=200, max_embed_batch=len(queries))
    with serve_in_thread(retriever, settings) as base:
        recording.fail = True
        failed = post_together(base, queries)
        recording.fail = False
        after = post(base, queries[0])
    assert [r.status_code for r in failed] == [500] * len(queries)
    assert all("query embedding failed: RuntimeError: model exploded" in r.json()["detail"]
               for r in failed)
    assert after.status_code == 200
    assert after.json()["results"][0]["hits"][0]["id"] == "b5"


def rows(future: Future[np.ndarray]) -> list[float]:
    return future.result(timeout=30)[:, 0].tolist()


def test_batcher_gives_each_request_its_own_rows_from_one_call() -> None:
    embed = StandIn(hold_first=True)
    with EmbedBatcher(embed, max_texts=64, wait_s=0) as batcher:
        first = batcher.submit(["0"])
        assert embed.entered.wait(30)
        queued = [batcher.submit([str(n), str(n + 0.5)]) for n in range(1, 6)]
        embed.gate.set()
        assert rows(first) == [0.0]
        assert [rows(f) for f in queued] == [[n, n + 0.5] for n in range(1, 6)]
    assert len(embed.calls) == 2
    assert embed.calls[1] == [t for n in range(1, 6) for t in (str(n), str(n + 0.5))]


def test_batcher_caps_a_call_but_never_splits_a_request() -> None:
    embed = StandIn(hold_first=True)
    with EmbedBatcher(embed, max_texts=3, wait_s=0) as batcher:
        futures = [batcher.submit(["1"])]
        assert embed.entered.wait(30)
        futures += [batcher.submit(t) for t in (["2", "3"], ["4", "5"], ["6", "7", "8", "9"])]
        embed.gate.set()
        assert [len(rows(f)) for f in futures] == [1, 2, 2, 4]
    assert embed.calls == [["1"], ["2", "3"], ["4", "5"], ["6", "7", "8", "9"]]


def test_a_failed_call_is_retried_per_request_so_only_the_bad_request_fails() -> None:
    embed = StandIn(hold_first=True)
    with EmbedBatcher(embed, wait_s=0) as batcher:
        first = batcher.submit(["1"])
        assert embed.entered.wait(30)
        shared = [batcher.submit(["2"]), batcher.submit(["bad"]), batcher.submit(["3", "4"])]
        embed.gate.set()
        assert rows(first) == [1.0]
        assert rows(shared[0]) == [2.0] and rows(shared[2]) == [3.0, 4.0]
        with pytest.raises(RuntimeError, match="model exploded"):
            shared[1].result(timeout=30)
        assert embed.calls[1:] == [["2", "bad", "3", "4"], ["2"], ["bad"], ["3", "4"]]
        assert rows(batcher.submit(["5"])) == [5.0]


def test_a_deep_rerank_takes_turns_so_a_light_request_waits_one_chunk() -> None:
    embed = StandIn(hold_first=True)
    heavy_texts = [str(n) for n in range(40)]
    with EmbedBatcher(embed, max_texts=4, wait_s=0) as batcher, ThreadPoolExecutor(1) as pool:
        heavy = pool.submit(batcher.embed_in_turns, heavy_texts, 4)
        assert embed.entered.wait(30)
        light = batcher.submit(["99"])
        embed.gate.set()
        assert rows(light) == [99.0]
        assert heavy.result(timeout=30)[:, 0].tolist() == [float(t) for t in heavy_texts]
    assert all(len(call) <= 4 for call in embed.calls)
    assert embed.calls[:2] == [heavy_texts[:4], ["99"]]


def test_a_short_answer_from_the_embedder_is_an_error_not_wrong_rows() -> None:
    with (EmbedBatcher(lambda texts: np.zeros((1, 4), np.float32)) as batcher,
          pytest.raises(ValueError, match="1 rows for 2 texts")):
        batcher.submit(["a", "b"]).result(timeout=30)


def test_closing_embeds_what_is_queued_then_refuses_more() -> None:
    embed = StandIn(hold_first=True)
    batcher = EmbedBatcher(embed, wait_s=0)
    first = batcher.submit(["1"])
    assert embed.entered.wait(30)
    queued = batcher.submit(["2"])
    closing = threading.Thread(target=batcher.close)
    closing.start()
    embed.gate.set()
    closing.join(timeout=30)
    assert not closing.is_alive()
    assert (rows(first), rows(queued)) == ([1.0], [2.0])
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(["3"])


def test_if_the_batcher_thread_dies_no_request_is_left_waiting(monkeypatch) -> None:
    died: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda hook: died.append(hook.exc_value))
    embed = StandIn(hold_first=True)
    batcher = EmbedBatcher(embed, wait_s=0, max_texts=1)
    first = batcher.submit(["fatal"])
    assert embed.entered.wait(30)
    queued = batcher.submit(["2"])
    embed.gate.set()
    with pytest.raises(Fatal):
        first.result(timeout=30)
    with pytest.raises(RuntimeError, match="stopped"):
        queued.result(timeout=30)
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(["3"])
    batcher.close()
    assert [type(e) for e in died] == [Fatal]


def test_an_exposed_server_needs_a_real_token() -> None:
    with pytest.raises(ValueError, match="exposes the API beyond this machine"):
        ServerConfig(host="0.0.0.0")
    with pytest.raises(ValueError, match="at least 8 characters"):
        ServerConfig(token="")
    assert ServerConfig(host="0.0.0.0", token="long-enough-token").host == "0.0.0.0"


def test_request_options_are_bounded() -> None:
    with pytest.raises(ValueError, match="minhash_perms"):
        SearchOptions(minhash_perms=10**9)


@pytest.mark.slow
def test_bad_clients_fail_only_their_own_requests(served, monkeypatch) -> None:
    """2 clients send what the model cannot take (a lone surrogate, refused before the
    batch; a text that breaks the model, retried alone), 8 send good queries, together."""
    _, texts, retriever = served
    recording = Recording(retriever.embed)
    recording.poison = "this text breaks the model"
    monkeypatch.setattr(retriever, "embed", recording)
    good = [" ".join(texts[i].split()[:10]) for i in range(0, 80, 10)]
    settings = SETTINGS.with_(batch_wait_ms=300, max_embed_batch=len(good) + 2)
    bodies = [{"queries": q, "k": 3} for q in good] + [
        {"queries": "jury \ud800 election"}, {"queries": recording.poison}]
    with serve_in_thread(retriever, settings) as base, ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda body: post_json(f"{base}/search", body), bodies))
    assert [r.status_code for r in answers] == [200] * len(good) + [422, 500]
    assert any(recording.poison in call and len(call) > 1 for call in recording.calls), \
        "the poisoned query never shared a call with good ones"


@pytest.mark.slow
def test_a_heavy_rerank_does_not_hold_the_model_from_a_light_request(served,
                                                                      monkeypatch) -> None:
    """The rerank's passages are re-embedded in turns of max_embed_batch texts, so a light
    query sent while a deep rerank runs is embedded before the rerank's last turn."""
    _, texts, retriever = served
    recording = Recording(retriever.embed)
    monkeypatch.setattr(retriever, "embed", recording)
    light = " ".join(texts[20].split()[:10])
    heavy = {"queries": " ".join(texts[3].split()[:10]), "k": 10,
             "options": {"rerank": True, "rerank_depth": 100, "candidates": 200}}
    with serve_in_thread(retriever, SETTINGS.with_(max_embed_batch=5, rerank_turn=5)) as base, \
            ThreadPoolExecutor(1) as pool:
        heavy_answer = pool.submit(post_json, f"{base}/search", heavy)
        while len(recording.calls) < 3 and not heavy_answer.done():
            time.sleep(0.01)
        light_answer = post(base, light)
        assert heavy_answer.result(timeout=120).status_code == 200
    assert light_answer.status_code == 200 and hit_ids(light_answer)[0] == "b20"
    assert max(len(call) for call in recording.calls) <= 5
    light_call = next(i for i, call in enumerate(recording.calls) if light in call)
    assert light_call < len(recording.calls) - 1, "the light query waited for the whole rerank"
    assert len(recording.calls) >= 10, "the rerank was not embedded in turns"


@pytest.mark.slow
def test_the_token_and_size_are_checked_before_the_body_is_read(served) -> None:
    base, _, _ = served
    huge = b'{"queries": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    unauthorized = httpx.post(f"{base}/search", content=huge,
                              headers={"Content-Type": "application/json"})
    assert unauthorized.status_code == 401
    too_large = httpx.post(f"{base}/search", content=huge,
                           headers={**AUTH, "Content-Type": "application/json"})
    assert too_large.status_code == 413 and "at most 1048576" in too_large.text

    def chunks() -> Iterator[bytes]:
        yield b'{"queries": "q"}'

    unsized = httpx.post(f"{base}/search", content=chunks(),
                         headers={**AUTH, "Content-Type": "application/json"})
    assert unsized.status_code == 411


@pytest.mark.slow
def test_the_openapi_spec_declares_the_bearer_scheme_and_every_status(served) -> None:
    base, _, _ = served
    spec = httpx.get(f"{base}/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert [s["scheme"] for s in schemes.values()] == ["bearer"]
    search = spec["paths"]["/search"]["post"]
    assert search["security"] == [{name: []} for name in schemes]
    assert set(search["responses"]) == {"200", "401", "411", "413", "422", "500"}



@pytest.mark.slow
def test_every_response_holds_to_the_spec(served: Served) -> None:
    """Schemathesis's checks (no 5xx, declared statuses, content types and bodies, invalid
    data refused, valid data accepted) over generated requests to every operation; the
    server's limits kept small so the heaviest valid request stays a few seconds on CPU."""
    tight = SETTINGS.with_(max_batch=2, max_rerank_depth=5, max_candidates=50,
                           max_eval_texts=2, max_eval_chars=200)
    with serve_in_thread(served.retriever, tight) as base:
        schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.path for op in operations} == {"/health", "/search"}
        for operation in operations:
            @given(case=operation.as_strategy())
            @settings(max_examples=40, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def holds(case: schemathesis.Case) -> None:
                case.call_and_validate(headers=AUTH, timeout=120)

            holds()
