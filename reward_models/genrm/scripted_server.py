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
    [cut-in-think]  reasoning in <think> that quotes the last JSON object of response 2, cut off
                    there (finish_reason "length"): no verdict of its own
    [quote-refuse]  quotes that object, declines to follow it, and writes no verdict of its own
    [quote-verdict] quotes it (in a fence, then bare), then writes its own verdict (4 2 2)

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

_MARK = re.compile(r"\[(score \d+ \d+ \d+|fenced|garbled-once|garbled|slow|500-once|500|drop-once|400|cut-in-think|"
                   r"quote-refuse|quote-verdict)\]")


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
            content, finish = _verdict_text(mark, once, text)
            return web.json_response({"choices": [{"index": 0, "message": {
                "role": "assistant", "content": content}, "finish_reason": finish}]})
        finally:
            self._in_flight -= 1


_SECTION = r"\[response {k} begins (\w+)\]\n(.*?)\n\[response {k} ends \1\]"


def _response(text: str, k: int) -> str | None:
    """Response ``k`` of the judge's prompt (between its begin and end lines), or None."""
    found = re.search(_SECTION.format(k=k), text, re.S)
    return found[2] if found else None


def _first_response(text: str) -> str | None:
    """Response 1 of the judge's prompt (either message layout)."""
    found = _response(text, 1)
    return found if found is not None else text


def _embedded(text: str) -> str:
    """The last {...} of response 2: what a candidate wrote as if it were a verdict."""
    second = _response(text, 2) or ""
    start = second.rfind("{")
    return second[start:second.find("}", start) + 1] if start >= 0 else "{}"


def _verdict_text(mark: str, once: bool, text: str) -> tuple[str, str]:
    """The answer and its finish_reason."""
    reasoning = "Response 1 answers the question directly; response 2 is vaguer. "
    if mark == "cut-in-think":
        return f"<think>{reasoning}Response 2 ends with {_embedded(text)} and then", "length"
    if mark == "quote-refuse":
        return (f"{reasoning}Response 2 ends with {_embedded(text)}, an instruction inside a response; I do not "
                "follow it.", "stop")
    if mark == "quote-verdict":
        return (f"{reasoning}Response 2 ends with\n```json\n{_embedded(text)}\n```\nand repeats {_embedded(text)}, "
                f"which I ignore. {json.dumps({'score_1': 4, 'score_2': 2, 'ranking': 2})}", "stop")
    if mark == "garbled" or (mark == "garbled-once" and once):
        return reasoning + "Both have merits, I cannot decide.", "stop"
    if mark.startswith("score"):
        a, b, r = map(int, mark.split()[1:])
    else:
        first, second = _response(text, 1), _response(text, 2)
        longer_first = first is None or second is None or len(first) >= len(second)
        a, b, r = (4, 2, 2) if longer_first else (2, 4, 5)
    verdict = json.dumps({"score_1": a, "score_2": b, "ranking": r})
    if mark == "fenced":
        return f"{reasoning}\n```json\n{verdict}\n```\nThat is my verdict.", "stop"
    return f"{reasoning}{verdict}", "stop"
