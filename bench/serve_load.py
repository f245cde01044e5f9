"""Load test of `tunesmith serve` on loopback: N chat requests at concurrency C, mixed adapters, zero errors expected.

Starts the server as a subprocess (127.0.0.1, a free port, no key: loopback only), sends DBLP-QuAD validation
questions round-robin to the base model and two adapter names, greedy, and reports errors, p50/p95 latency and
generated tokens per second; SIGTERM at the end (graceful shutdown). Bounded: N requests, then it stops.

    .venv/bin/python bench/serve_load.py --run runs/dblp-quad-lora [--n 200] [--concurrency 16] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


async def load(url: str, models: list[str], questions: list[str], n: int, concurrency: int, max_tokens: int):
    import httpx

    sem = asyncio.Semaphore(concurrency)
    latencies, tokens, errors = [], 0, []

    async with httpx.AsyncClient(timeout=600) as client:
        async def one(i: int):
            nonlocal tokens
            body = {"model": models[i % len(models)], "max_tokens": max_tokens, "temperature": 0,
                    "messages": [{"role": "user", "content": questions[i % len(questions)]}]}
            async with sem:
                start = time.perf_counter()
                try:
                    r = await client.post(url + "/v1/chat/completions", json=body)
                    if r.status_code != 200:
                        errors.append(f"{r.status_code}: {r.text[:200]}")
                        return
                    tokens += r.json()["usage"]["completion_tokens"]
                    latencies.append(time.perf_counter() - start)
                except httpx.HTTPError as e:
                    errors.append(repr(e))

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - start
    return latencies, tokens, errors, wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", required=True, help="A LoRA run, served under two names (plus the base model)")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=16)
    args = parser.parse_args()

    import yaml

    from tunesmith.config import load_config
    from tunesmith.files import read_jsonl

    base = load_config(Path(args.run) / "config.yaml").model.name
    questions = [row["question"] for _, row in read_jsonl(ROOT / "examples/dblp_quad/data/valid.jsonl")]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = {"host": "127.0.0.1", "port": port, "no_auth": True,
           "models": [{"model": base, "name": "base"}, {"run": args.run, "name": "adapter-a"},
                      {"run": args.run, "name": "adapter-b"}],
           "batching": {"max_batch_size": args.max_batch_size, "wait_ms": 20}}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(cfg, f)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, "-m", "tunesmith.cli", "serve", f.name], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            raise SystemExit("server did not start")
        # warm-up (first batch pays one-off costs), not counted
        asyncio.run(load(url, ["base", "adapter-a"], questions, 2, 2, 4))
        latencies, tokens, errors, wall = asyncio.run(load(url, ["base", "adapter-a", "adapter-b"], questions, args.n,
                                                           args.concurrency, args.max_tokens))
        metrics = httpx.get(url + "/metrics", timeout=10).text
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(120)
    latencies.sort()
    pct = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")  # noqa: E731
    batches = [line for line in metrics.splitlines() if line.startswith("tunesmith_batch_size_")]
    count = next(float(line.split()[-1]) for line in batches if line.startswith("tunesmith_batch_size_count"))
    total = next(float(line.split()[-1]) for line in batches if line.startswith("tunesmith_batch_size_sum"))
    print(f"| requests | concurrency | errors | p50 latency | p95 latency | generated tokens/s | mean batch | wall |")
    print(f"|---|---|---|---|---|---|---|---|")
    print(f"| {args.n} | {args.concurrency} | {len(errors)} | {pct(0.5):.2f} s | {pct(0.95):.2f} s | "
          f"{tokens / wall:.1f} | {total / count:.1f} rows | {wall:.0f} s |")
    print(f"server exit code after SIGTERM: {server.returncode}")
    for e in errors[:5]:
        print("error:", e)


if __name__ == "__main__":
    main()
