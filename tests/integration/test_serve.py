"""`tunesmith serve` on 127.0.0.1, driven by the official openai client: a base model and two LoRA adapters."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
import yaml

pytestmark = pytest.mark.integration
openai = pytest.importorskip("openai")

KEY = "test-key-0123456789abcdef"


def _adapter_run(root: Path, model_dir: Path, name: str, seed: int) -> Path:
    from peft import LoraConfig, get_peft_model

    from tunesmith.models.loading import load_model

    run = root / name
    (run / "final").mkdir(parents=True)
    torch.manual_seed(seed)
    model = get_peft_model(load_model(model_dir, device="cpu"),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(run / "final")
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"name": str(model_dir), "device": "cpu"},
                                                     "data": {"train": "unused.jsonl"}, "method": {"name": "lora"}}))
    return run


class Server:
    def __init__(self, cfg, keys):
        import uvicorn

        from tunesmith.serve.app import create_app
        from tunesmith.serve.models import ModelPool

        self.pool = ModelPool(cfg)
        self.app = create_app(cfg, self.pool, keys)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    timeout_graceful_shutdown=30))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                break
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self, key=KEY):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=60)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    from tunesmith.guardrails.config import GuardrailsConfig
    from tunesmith.serve.config import ServeConfig

    root = tmp_path_factory.mktemp("serve")
    alpha = _adapter_run(root, tiny_model_dir, "alpha", 10)
    beta = _adapter_run(root, tiny_model_dir, "beta", 11)
    rails = GuardrailsConfig.model_validate({
        "input": {"pii": {"detector": {"ner": False}}, "blocked_topics": [{"name": "weapons", "terms": ["bomb"]}]},
        "output": {"deny": ["forbiddenword"]}, "audit_log": str(root / "audit.jsonl")})
    cfg = ServeConfig.model_validate({
        "models": [{"model": str(tiny_model_dir), "name": "base"}, {"run": str(alpha)}, {"run": str(beta)},
                   {"run": str(alpha), "name": "guarded", "guardrails": rails.model_dump()}],
        "api_keys": [KEY], "batching": {"max_batch_size": 8, "wait_ms": 300},
        "limits": {"max_tokens": 64, "max_request_bytes": 20_000, "max_prompt_tokens": 200}, "precision": "fp32"})
    server = Server(cfg, [KEY])
    yield server, root
    server.stop()


def _reference(server, model: str, text: str, max_tokens: int) -> str:
    """What the one generation path answers for this model alone, greedy."""
    from tunesmith.generate import BASE_ADAPTER, RowRequest, encode_chat, generate_rows

    entry = server.pool.get(model)
    row = RowRequest(encode_chat(entry.group.tokenizer, [{"role": "user", "content": text}]), max_new_tokens=max_tokens,
                     adapter=entry.adapter or BASE_ADAPTER)
    return generate_rows(entry.group.model, entry.group.tokenizer, [row], precision="fp32")[0].text


def test_models_and_plain_chat_for_two_adapters_and_the_base(served):
    server, _ = served
    client = server.client()
    assert {m.id for m in client.models.list()} == {"base", "alpha", "beta", "guarded"}
    answers = {}
    for model in ("base", "alpha", "beta"):
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "What are the papers?"}],
                                           max_tokens=12, temperature=0)
        answers[model] = r.choices[0].message.content
        assert r.model == model and r.object == "chat.completion"
        assert r.choices[0].finish_reason in ("stop", "length")
        assert r.usage.completion_tokens <= 12 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        assert answers[model] == _reference(server, model, "What are the papers?", 12)
    assert len(set(answers.values())) == 3  # each adapter answers differently


def test_streaming_chat_and_completions_add_up_to_the_plain_answer(served):
    server, _ = served
    client = server.client()
    msgs = [{"role": "user", "content": "fox"}]
    plain = client.chat.completions.create(model="alpha", messages=msgs, max_tokens=16, temperature=0)
    chunks = list(client.chat.completions.create(model="alpha", messages=msgs, max_tokens=16, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    completion = client.completions.create(model="beta", prompt="the quick brown", max_tokens=10, temperature=0)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="beta", prompt="the quick brown", max_tokens=10, temperature=0, stream=True))
    assert streamed == completion.choices[0].text and completion.object == "text_completion"
    # the raw stream ends with data: [DONE]
    raw = httpx.post(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                     json={"model": "base", "messages": msgs, "max_tokens": 4, "stream": True}, timeout=60)
    assert raw.text.rstrip().endswith("data: [DONE]")


def test_requests_arriving_together_share_a_batch_across_adapters(served):
    server, _ = served
    client = server.client()
    jobs = [("alpha", "fox"), ("beta", "fox"), ("base", "What are the papers?"), ("alpha", "the quick brown")]
    before = len(server.app.state.engine.batch_sizes)
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(client.chat.completions.create, model=m, messages=[{"role": "user", "content": q}],
                               max_tokens=10, temperature=0) for m, q in jobs]
        results = [f.result().choices[0].message.content for f in futures]
    sizes = server.app.state.engine.batch_sizes[before:]
    assert max(sizes) > 1, sizes  # mixed adapters in one batch
    assert results == [_reference(server, m, q, 10) for m, q in jobs]


def test_stop_seed_and_json_response_format(served):
    server, _ = served
    client = server.client()
    msgs = [{"role": "user", "content": "Did Alan Turing publish?"}]
    free = client.chat.completions.create(model="alpha", messages=msgs, max_tokens=20, temperature=0).choices[0].message.content
    assert len(free) > 4
    cut = client.chat.completions.create(model="alpha", messages=msgs, max_tokens=20, temperature=0, stop=[free[2:4]])
    assert cut.choices[0].message.content == free[: free.find(free[2:4])] and cut.choices[0].finish_reason == "stop"
    a, b = (client.chat.completions.create(model="beta", messages=msgs, max_tokens=12, temperature=1.0, seed=5)
            .choices[0].message.content for _ in range(2))
    assert a == b  # same seed, same sample
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99}},
              "required": ["n"], "additionalProperties": False}
    r = client.chat.completions.create(model="base", messages=msgs, max_tokens=40, temperature=0,
                                       response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert set(json.loads(r.choices[0].message.content)) == {"n"}


BAD = [
    ({"model": "base"}, 400),  # no messages
    ({"model": "base", "messages": []}, 400),
    ({"model": "base", "messages": [{"role": "wizard", "content": "x"}]}, 400),
    ({"model": "base", "messages": [{"role": "user", "content": "x"}], "temperature": 7}, 400),
    ({"model": "base", "messages": [{"role": "user", "content": "x"}], "n": 2}, 400),
    ({"model": "base", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10_000}, 400),
    ({"model": "base", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400),
    ({"model": "base", "messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}, 400),
    ({"model": "base", "messages": [{"role": "user", "content": "x"}], "tools": []}, 400),
    ({"model": "base", "messages": [{"role": "user", "content": "x"}], "logprobs": True}, 400),
    ({"model": "base", "messages": [{"role": "user", "content": "fox " * 300}]}, 400),  # prompt too long
    ({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404),
    ({"model": 3, "messages": "x"}, 400),
    ([1, 2, 3], 400),
]


@pytest.mark.parametrize("body,status", BAD)
def test_malformed_requests_get_openai_shaped_4xx(served, body, status):
    server, _ = served
    r = httpx.post(server.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert r.status_code == status, r.text
    assert set(r.json()["error"]) >= {"message", "type", "param", "code"}


def test_auth_size_limit_broken_json_and_client_errors(served):
    server, _ = served
    url = server.url + "/v1/chat/completions"
    msg = {"model": "base", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    assert httpx.post(url, json=msg, timeout=30).status_code == 401
    assert httpx.post(url, json=msg, headers={"Authorization": "Bearer wrong"}, timeout=30).status_code == 401
    big = {**msg, "messages": [{"role": "user", "content": "x" * 30_000}]}
    assert httpx.post(url, json=big, headers={"Authorization": f"Bearer {KEY}"}, timeout=30).status_code == 413
    broken = httpx.post(url, content=b"{not json", headers={"Authorization": f"Bearer {KEY}",
                                                            "Content-Type": "application/json"}, timeout=30)
    assert broken.status_code == 400
    with pytest.raises(openai.AuthenticationError):
        server.client(key="nope").models.list()
    with pytest.raises(openai.NotFoundError):
        server.client().chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        server.client().chat.completions.create(model="base", messages=[{"role": "user", "content": "x"}], temperature=5)
    assert httpx.get(server.url + "/health", timeout=30).json()["status"] == "ok"  # no key needed
    metrics = httpx.get(server.url + "/metrics", timeout=30).text
    assert "tunesmith_requests_total" in metrics and "tunesmith_batch_size_bucket" in metrics


def test_guardrails_per_served_model(served):
    server, root = served
    client = server.client()
    refused = client.chat.completions.create(model="guarded", messages=[{"role": "user", "content": "how to build a bomb"}])
    assert refused.choices[0].finish_reason == "content_filter"
    assert refused.choices[0].message.content == "Sorry, I can't help with that request."
    # the same prompt to the unguarded adapter is answered
    assert client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "how to build a bomb"}],
                                          max_tokens=4).choices[0].finish_reason != "content_filter"
    ok = client.chat.completions.create(model="guarded", max_tokens=8, temperature=0,
                                        messages=[{"role": "user", "content": "mail me at jane.doe@example.com"}])
    assert ok.choices[0].finish_reason in ("stop", "length")
    streamed = list(client.chat.completions.create(model="guarded", stream=True, max_tokens=8, temperature=0,
                                                   messages=[{"role": "user", "content": "mail me at jane.doe@example.com"}]))
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == ok.choices[0].message.content
    log = (root / "audit.jsonl").read_text()
    assert "jane.doe" not in log and "bomb" not in log  # hashes, never values
    rails = [json.loads(line) for line in log.splitlines()]
    assert {"input.topic", "input.pii"} <= {r["rail"] for r in rails}
    assert all(len(r["sha256"]) in (0, 16) for r in rails)
    assert (root / "audit.jsonl").stat().st_mode & 0o777 == 0o600


def test_graceful_shutdown_finishes_requests_in_flight(tiny_model_dir):
    from tunesmith.serve.config import ServeConfig

    cfg = ServeConfig.model_validate({"models": [{"model": str(tiny_model_dir), "name": "base"}], "no_auth": True,
                                      "limits": {"max_tokens": 512}, "precision": "fp32"})
    server = Server(cfg, [])
    client = server.client(key="unused")
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(client.chat.completions.create, model="base", max_tokens=400,
                             messages=[{"role": "user", "content": "fox"}], temperature=1.0, seed=1)
        for _ in range(200):  # wait until it is generating
            if server.app.state.engine.busy:
                break
            time.sleep(0.01)
        server.server.should_exit = True  # what SIGTERM does
        result = future.result(timeout=60)
    server.thread.join(30)
    assert result.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.APIConnectionError):
        client.models.list()


def test_keys_required_unless_loopback_no_auth(monkeypatch):
    from tunesmith.records import TunesmithError
    from tunesmith.serve.config import ServeConfig, resolve_keys

    monkeypatch.delenv("TUNESMITH_API_KEYS", raising=False)
    with pytest.raises(TunesmithError, match="no API keys"):
        resolve_keys(ServeConfig(), None)
    with pytest.raises(TunesmithError, match="loopback"):
        resolve_keys(ServeConfig(host="0.0.0.0", no_auth=True), None)
    assert resolve_keys(ServeConfig(no_auth=True), None) == []
    with pytest.raises(TunesmithError, match="shorter than 16"):
        resolve_keys(ServeConfig(api_keys=["short"]), None)
    monkeypatch.setenv("TUNESMITH_API_KEYS", "k" * 20)
    assert resolve_keys(ServeConfig(), None) == ["k" * 20]


def test_a_request_arriving_mid_batch_joins_it_and_is_answered_first(served):
    """Continuous batching in the server: a short request that arrives while a long one generates joins its batch
    (at the next DROP_FINISHED_EVERY boundary) instead of waiting for it, and is answered as soon as its own row
    ends, with the answer it gets alone. It is submitted from the long row's first streamed text, so it is surely
    waiting before the long row ends."""
    import asyncio

    from tunesmith.generate import BASE_ADAPTER, RowRequest, encode_chat
    from tunesmith.serve.engine import Engine, Job

    server, _ = served
    group = server.pool.get("base").group
    engine = Engine(max_batch_size=4, wait_ms=0, max_queue=8, precision="fp32")
    loop = asyncio.new_event_loop()

    def job(text: str, max_new_tokens: int, on_text=None) -> Job:
        row = RowRequest(encode_chat(group.tokenizer, [{"role": "user", "content": text}]),
                         max_new_tokens=max_new_tokens, adapter=BASE_ADAPTER, on_text=on_text)
        return Job(group=group, row=row, loop=loop, events=asyncio.Queue())

    short, submitted = job("fox", 3), []

    def submit_short(piece: str) -> None:
        if not submitted:
            submitted.append(piece)
            engine.submit(short)

    long = job("What are the papers?", 64, on_text=submit_short)
    answered = []

    async def answer(j: Job):
        kind, value = await j.events.get()
        answered.append(j)
        return kind, value

    async def both():
        return await asyncio.wait_for(asyncio.gather(answer(long), answer(short)), 60)

    try:
        engine.submit(long)
        (long_kind, long_result), (short_kind, short_result) = loop.run_until_complete(both())
    finally:
        engine.stop(30)
        loop.close()
    assert long_kind == short_kind == "done"
    assert [id(j) for j in answered] == [id(short), id(long)]
    assert 2 in engine.batch_sizes  # the short request joined the running batch
    assert short_result.text == _reference(server, "base", "fox", 3)
    assert long_result.completion_tokens == 64


def test_a_run_trained_on_compact_iris_reads_and_answers_them_written_out(tiny_model_dir, tmp_path):
    """data.iri_prefixes: the prompt is compacted as in training, the answer expanded back, streamed or not."""
    from tunesmith.generate import encode_chat
    from tunesmith.serve.config import ServeConfig

    prefixes = {"pid": "https://dblp.org/pid/"}
    run = _adapter_run(tmp_path, tiny_model_dir, "kg", 12)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"]["iri_prefixes"] = prefixes
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    server = Server(ServeConfig.model_validate({"models": [{"run": str(run)}], "no_auth": True, "precision": "fp32"}), [])
    try:
        client = server.client(key="unused")
        question = "Who is <https://dblp.org/pid/7>?"
        schema = {"type": "string", "enum": ["pid:7"]}  # the model writes the compact form, as it was trained to
        settings = dict(model="kg", messages=[{"role": "user", "content": question}], max_tokens=20, temperature=0,
                        response_format={"type": "json_schema", "json_schema": {"name": "iri", "schema": schema}})
        plain = client.chat.completions.create(**settings)
        assert plain.choices[0].message.content == '"<https://dblp.org/pid/7>"'
        tokenizer = server.pool.get("kg").group.tokenizer
        assert plain.usage.prompt_tokens == len(encode_chat(tokenizer, [{"role": "user", "content": "Who is pid:7?"}]))
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**settings, stream=True)
                           if c.choices)
        assert streamed == plain.choices[0].message.content
    finally:
        server.stop()
