"""Throughput of the Gemini path of ``rationale_kit.rationales.llm.run_llm`` against a local fake server.

The fake server (``tests/fake_gemini.py``, loopback only, in a child process unless
``--in-process``) adds a fixed latency to every request;
with ``C`` requests in flight the ideal rate is ``C / latency`` requests per second. The benchmark
runs ``N`` requests through ``run_llm`` (Gemini backend, disk cache on, fsync on), prints the
achieved rate against the ideal (aim: ratio >= 0.8), then reruns the same requests and prints the
number of new calls (must be 0: everything comes from the cache).

    .venv/bin/python benchmarks/llm_throughput.py [--n 160] [--concurrency 16] [--latency 0.2]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from fake_gemini import FakeGemini, FakeGeminiProcess  # noqa: E402

from rationale_kit.rationales import llm  # noqa: E402

CODES = [("E11.9", "Type 2 diabetes mellitus without complications"), ("I10", "Essential (primary) hypertension")]


async def _bare_http_rate(base_url: str, n: int, concurrency: int) -> float:
    """Requests per second of a bare ``httpx2`` async client at the same concurrency: the floor set
    by this machine (a busy CPU slows every request), without google-genai or run_llm."""
    import httpx2

    body = json.dumps({"contents": [{"role": "user", "parts": [{"text": "<codes>\n- E11.9: d\n</codes>\n<note>\na b\n</note>"}]}]})
    sem = asyncio.Semaphore(concurrency)
    async with httpx2.AsyncClient(timeout=30) as client:
        async def one() -> None:
            async with sem:
                r = await client.post(base_url + "v1beta/models/bare:generateContent", content=body,
                                      headers={"Content-Type": "application/json"})
                r.json()

        await asyncio.gather(*[one() for _ in range(concurrency)])  # open the connections
        t0 = time.perf_counter()
        await asyncio.gather(*[one() for _ in range(n)])
        return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=160, help="requests")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--latency", type=float, default=0.2, help="seconds added by the server to each request")
    ap.add_argument("--in-process", action="store_true",
                    help="run the fake server in a thread of this process (it then competes for the GIL)")
    args = ap.parse_args(argv)

    note = "Patient with type 2 diabetes on metformin; essential hypertension on lisinopril. " * 20
    requests = [
        llm.LLMRequest(f"n{i}", llm.build_prompt(f"[note {i}] {note}", CODES), tuple(CODES)) for i in range(args.n)
    ]
    server_cm = FakeGemini(latency=args.latency) if args.in_process else FakeGeminiProcess(latency=args.latency)
    with server_cm as server, tempfile.TemporaryDirectory() as tmp:
        backend = llm.GeminiBackend(api_key="fake-benchmark-key", base_url=server.base_url, timeout_s=30)
        warm = [llm.LLMRequest("w", llm.build_prompt(f"[warm-up {i}] {note}", CODES), tuple(CODES)) for i in range(4)]
        llm.run_llm(warm, backend, cache_dir=None, concurrency=4, progress=False, credentialed=False)  # first-call set-up, not timed
        warm_hits = server.hits
        t0 = time.perf_counter()
        answers, calls = llm.run_llm(requests, backend, cache_dir=tmp, concurrency=args.concurrency, progress=False,
                                     credentialed=False)
        elapsed = time.perf_counter() - t0
        ok = int((calls.status == "ok").sum())
        hits = server.hits - warm_hits
        rate = args.n / elapsed
        ideal = args.concurrency / args.latency
        print(f"first run : {args.n} requests ({ok} ok, {hits} server hits) in {elapsed:.2f} s")
        print(f"            rate {rate:.1f} req/s, ideal {ideal:.1f} req/s (C={args.concurrency} / "
              f"latency {args.latency:g} s): ratio {rate / ideal:.2f} {'(>= 0.8: ok)' if rate / ideal >= 0.8 else '(< 0.8)'}")
        bare = asyncio.run(_bare_http_rate(server.base_url, args.n, args.concurrency))
        print(f"            bare httpx2 client on this machine now: {bare:.1f} req/s (ratio {bare / ideal:.2f}); "
              f"run_llm reaches {rate / bare:.2f} of it")
        before = server.hits
        t0 = time.perf_counter()
        _, calls2 = llm.run_llm(requests, backend, cache_dir=tmp, concurrency=args.concurrency, progress=False,
                                credentialed=False)
        elapsed2 = time.perf_counter() - t0
        new_calls = server.hits - before
        print(f"rerun     : {new_calls} new calls, {int((calls2.status == 'cached').sum())} cached, {elapsed2:.2f} s")
        summary = llm.calls_summary(calls)
        print(f"summary   : {summary['input_tokens']} input / {summary['output_tokens']} output tokens, "
              f"estimated cost at Gemini 2.0 Flash prices ${summary['estimated_cost_usd']:.4f}")
    return 0 if new_calls == 0 and ok == args.n else 1


if __name__ == "__main__":
    raise SystemExit(main())
