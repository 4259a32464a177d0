"""``rlvr generate``: prompts -> a checkpoint's responses -> JSONL, the file-to-file job.

Every input row is written back with what was generated for it: ``response`` (``responses`` for
n > 1), ``response_tokens`` and ``finish_reasons`` (one per sample), in input order. The same
guarantees as ``rlvr score`` (``rlvr/scoring/job.py``): a row that cannot be used (not a JSON
object, no prompt, too long for the model's context) is reported on stderr and written with an
``error``; Ctrl-C keeps every row written; re-running the same command continues after the last
complete line, and ``<output>.rlvr.json`` refuses to mix two jobs in one output.

Prompts come from a column (``prompt_field``) or a template over the row's fields, as in a
training data source. Generation runs on a rollout pool (``rlvr.collect.open_pool``): the engine
in this process, or Ray rollout workers; rows go to it a chunk at a time (enough to fill every
worker's batch), so the progress bar moves and an interruption loses at most one chunk.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from rlvr.config import SamplingConfig
from rlvr.rollout.engine import SamplingParams
from rlvr.rows import BadRow, UsageError, count_rows, first_row, numbered_rows
from rlvr.scoring.job import Output, OutputKind, Report, check_paths, fingerprint, write_rows

GENERATED = OutputKind(tool="rlvr generate", record_key="finish_reasons", noun="generations", row_noun="generated row")


@dataclasses.dataclass
class Summary:
    rows: int = 0
    resumed_from: int = 0
    generated: int = 0  # rows with responses (the others were reported)
    tokens: int = 0  # generated tokens
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"rows": self.rows, "resumed_from": self.resumed_from, "generated": self.generated,
                "errors": self.rows - self.resumed_from - self.generated, "tokens": self.tokens,
                "seconds": round(self.seconds, 2),
                "tokens_per_s": round(self.tokens / self.seconds, 1) if self.seconds > 0 else None}


def prompt_text(row, prompt_field: str, template: str) -> str:
    """The prompt of one row; ``ValueError`` saying why there is none."""
    if isinstance(row, BadRow):
        raise ValueError(row.error)
    if template == "{prompt}" and not isinstance(row.get(prompt_field), str):
        raise ValueError(f"no string column {prompt_field!r} (its columns: {', '.join(map(str, row)) or 'none'})")
    try:
        return template.format(**(row | {"prompt": row.get(prompt_field)}))
    except (KeyError, IndexError) as err:
        raise ValueError(f"--template needs field {err.args[0]!r}, which the row does not have") from None


def check_length(pool, prompt: str, max_tokens: int) -> None:
    """``ValueError`` when ``prompt`` and ``max_tokens`` new tokens do not fit the model's context."""
    tokens = len(pool.tokenizer.encode(prompt))
    if tokens + max_tokens > pool.max_model_len:
        raise ValueError(f"{tokens} prompt tokens + --max-tokens {max_tokens} exceed the model's context of "
                         f"{pool.max_model_len}")


def generate_file(pool, input_path: Path, output_path: Path, *, model: Path, n: int, sampling: SamplingConfig,
                  seed: int, prompt_field: str = "prompt", template: str = "{prompt}", split: str | None = None,
                  ignore_eos: bool = False, chunk_rows: int = 64, progress: bool = True,
                  on_bad_row: Report | None = None) -> Summary:
    """Generate for every row of ``input_path`` into ``output_path`` (JSONL) on ``pool``, resuming
    the same job; ``ignore_eos``: every sample runs to max_tokens (throughput measurements)."""
    report = on_bad_row or (lambda where, message: None)
    check_paths(input_path, output_path)
    first = first_row(input_path, split)
    if first is not None:
        try:
            prompt_text(first, prompt_field, template)
        except ValueError as err:
            raise UsageError(f"--prompt-field/--template: the first row: {err}") from None
    total = count_rows(input_path, split)
    job = {"input": str(input_path.resolve()), "fingerprint": fingerprint(input_path), "model": str(model.resolve()),
           "n": n, "sampling": sampling.model_dump(), "seed": seed, "prompt_field": prompt_field,
           "template": template, "split": split, "ignore_eos": ignore_eos}
    params = dataclasses.replace(sampling.params(n=n, seed=seed), ignore_eos=ignore_eos)
    with Output(output_path, job, total, GENERATED) as out:
        summary = Summary(rows=out.done, resumed_from=out.done)
        start = time.perf_counter()
        write_rows(out, numbered_rows(input_path, split), total, progress, summary, report,
                   lambda chunk: _generate_chunk(pool, chunk, params, prompt_field, template, summary, report),
                   chunk_rows=chunk_rows)
        summary.seconds = time.perf_counter() - start
    return summary


def _generate_chunk(pool, chunk: list, params: SamplingParams, prompt_field: str, template: str, summary: Summary,
                    report: Report) -> list[dict]:
    records, prompts, at = [], [], []
    for number, (line, row) in chunk:
        record = dict(row) if isinstance(row, dict) else {}
        try:
            text = prompt_text(row, prompt_field, template)
            check_length(pool, text, params.max_tokens)
            prompts.append(text)
            at.append(len(records))
        except ValueError as err:
            report(f"row {number}" + (f" (line {line})" if line is not None else ""), str(err))
            record.update(error=str(err), finish_reasons=[])
        records.append(record)
    completions = pool.generate(prompts, params) if prompts else []
    n = params.n
    for k, i in enumerate(at):
        samples = completions[k * n:(k + 1) * n]
        texts = [c.text for c in samples]
        records[i].update({"response": texts[0]} if n == 1 else {"responses": texts})
        records[i].update(response_tokens=[len(c.token_ids) for c in samples],
                          finish_reasons=[c.finish_reason for c in samples])
        summary.generated += 1
        summary.tokens += sum(len(c.token_ids) for c in samples)
    return records
