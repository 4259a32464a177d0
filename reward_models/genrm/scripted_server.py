"""A real HTTP server speaking the OpenAI chat-completions protocol whose answers are scripted:
the stand-in for a GenRM endpoint where the real judge (a 235B model on GPUs) cannot run, used by
the tests and ``benchmarks/judge_throughput.py``. Nothing else uses it.

It answers every request after ``latency`` seconds, as a judge would: reasoning, then the verdict
JSON. A marker in the first response's text scripts the answer:

    [score a b r]   the verdict {"score_1": a, "score_2": b, "ranking": r} (default: 4 2 2)
    [fenced]        the verdict in a ```json code fence, with trailing text
    [garbled]       no verdict at all, every time
    [garbled-once]  no verdict the first time this conversation is asked, a good one after
    [slow]          the answer comes after ``slow_latency`` seconds
    [500-once]      HTTP 500 the first time, then a good answer
    [500]           HTTP 500 every time
    [drop-once]     the connection is closed without an answer the first time
    [400]           HTTP 400 (a request the endpoint refuses)

Without a marker the verdict prefers the longer response (score 4 against 2), a judge with
a known taste. ``stats`` counts requests and the most that were in flight at once.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import threading

from aiohttp import web

_MARK = re.compile(r"\[(score \d+ \d+ \d+|fenced|garbled-once|garbled|slow|500-once|500|drop-once|400)\]")


class ScriptedJudgeServer:
    """``with ScriptedJudgeServer(latency=0.2) as server: server.base_url`` -> http://127.0.0.1:PORT/v1"""

    def __init__(self, latency: float = 0.0, slow_latency: float = 5.0):
        self.latency, self.slow_latency = latency, slow_latency
        self.stats = {"requests": 0, "peak_in_flight": 0, "authorization": set()}
        self._in_flight = 0
        self._seen: collections.Counter = collections.Counter()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="scripted-judge", daemon=True)
        self._runner = None
        self.base_url = ""

    def __enter__(self) -> ScriptedJudgeServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._answer)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}/v1"

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.stats["requests"] += 1
        self.stats["authorization"].add(request.headers.get("Authorization"))
        self._in_flight += 1
        self.stats["peak_in_flight"] = max(self.stats["peak_in_flight"], self._in_flight)
        try:
            text = "\n".join(m["content"] for m in body["messages"])
            first = _first_response(text)
            mark = (_MARK.search(first) or _MARK.search(text) or [None, ""])[1] if first is not None else ""
            key = (mark, text)
            self._seen[key] += 1
            once = self._seen[key] == 1
            await asyncio.sleep(self.slow_latency if mark == "slow" else self.latency)
            if mark == "500" or (mark == "500-once" and once):
                return web.Response(status=500, text="internal error")
            if mark == "400":
                return web.Response(status=400, text="bad request")
            if mark == "drop-once" and once:
                request.transport.close()
                return web.Response(status=500)
            return web.json_response({"choices": [{"index": 0, "message": {
                "role": "assistant", "content": _verdict_text(mark, once, text)}, "finish_reason": "stop"}]})
        finally:
            self._in_flight -= 1


def _first_response(text: str) -> str | None:
    """Response 1 of the judge's prompt (either message layout)."""
    found = re.search(r"\[response 1\]\n(.*?)\n\n\[response 2\]", text, re.S)
    return found[1] if found else text


def _verdict_text(mark: str, once: bool, text: str) -> str:
    reasoning = "Response 1 answers the question directly; response 2 is vaguer. "
    if mark == "garbled" or (mark == "garbled-once" and once):
        return reasoning + "Both have merits, I cannot decide."
    if mark.startswith("score"):
        a, b, r = map(int, mark.split()[1:])
    else:
        found = re.search(r"\[response 1\]\n(.*?)\n\n\[response 2\]\n(.*?)\n\n", text, re.S)
        longer_first = found is None or len(found[1]) >= len(found[2])
        a, b, r = (4, 2, 2) if longer_first else (2, 4, 5)
    verdict = json.dumps({"score_1": a, "score_2": b, "ranking": r})
    if mark == "fenced":
        return f"{reasoning}\n```json\n{verdict}\n```\nThat is my verdict."
    return f"{reasoning}{verdict}"
