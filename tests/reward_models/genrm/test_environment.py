"""The `judge` environment: groups, lone responses, and `rlvr score --env judge` over an HTTP judge."""

import json

import pytest

from rlvr.cli import main
from rlvr.env import TaskError, make_environment, scores_groups
from reward_models.genrm import JudgeEnvironment


def _env(endpoint, **kw):
    return make_environment("judge", base_url=endpoint.base_url, timeout=2.0, **kw)


def test_it_is_registered_and_scores_groups():
    assert scores_groups(JudgeEnvironment)
    with pytest.raises(ValueError, match="exactly one of base_url"):
        JudgeEnvironment()
    with pytest.raises(ValueError, match="circular, all"):
        JudgeEnvironment(base_url="http://127.0.0.1:1/v1", comparisons="pairs")


def test_a_group_is_compared_in_pairs_and_the_longest_wins(endpoint):
    env = _env(endpoint)  # the scripted judge prefers the longer response, 4 against 2
    rewards = env.score_group({"prompt": "Greet Ada."}, ["Hi", "Hello Ada, welcome!", "Hey Ada"])
    values = [r.value for r in rewards]
    assert values[1] == max(values) and values[0] == min(values)
    # circular: 3 comparisons, each response in two; its info holds those two verdicts
    assert endpoint.stats["requests"] == 3 and all(len(r.info["verdicts"]) == 2 for r in rewards)
    assert {"response_1", "response_2", "score_1", "score_2", "ranking"} <= set(rewards[0].info["verdicts"][0])


def test_many_groups_share_one_batch_of_requests(endpoint):
    env = _env(endpoint, comparisons="all", both_orders=True)
    out = env.score_groups([({"prompt": f"Task {i}"}, ["a", "bb", "ccc"]) for i in range(5)])
    assert len(out) == 5 and all(len(g) == 3 for g in out)
    assert endpoint.stats["requests"] == 5 * 6  # all 3 pairs, both orders


def test_a_lone_response_against_the_reference_or_skipped(endpoint):
    env = _env(endpoint)
    judged = env.score({"prompt": "Greet Ada.", "reference": "Hi"}, "Hello Ada, welcome!")
    assert judged.value == pytest.approx(0.75 + 0.1 * 0.6) and judged.info["against"] == "reference"
    skipped = env.score({"prompt": "Greet Ada."}, "Hello")
    assert skipped.value == 0.0 and skipped.info["skipped"] == 1 and "no reference" in skipped.info["why"]
    assert judged.info["skipped"] == 0


def test_tasks_are_checked(endpoint):
    env = _env(endpoint)
    env.check_task({"conversation": [{"role": "user", "content": "hi"}]})
    for bad, message in (({}, "missing field 'prompt'"), ({"conversation": "hi"}, "list of {role, content}"),
                         ({"prompt": "x", "reference": 3}, "'reference' must be str")):
        with pytest.raises(TaskError, match=message):
            env.check_task(bad)


def test_rlvr_score_judges_pairs_and_reports_agreement(endpoint, tmp_path, capsys):
    rows = [{"prompt": "Greet Ada.", "response_1": "Hello Ada, welcome!", "response_2": "Hi", "human": 1},
            {"prompt": "Greet Bob.", "response_1": "Yo", "response_2": "Good morning, Bob!", "human": 2},
            {"prompt": "Greet Cy.", "response_1": "Hey Cy, hi!", "response_2": "Hi", "human": 2},  # the judge disagrees
            {"prompt": "x", "response_1": "[garbled] a", "response_2": "b"},  # unparsable, every time: neutral
            {"prompt": "Greet Di.", "responses": ["a", "bb", "ccc"]},
            {"prompt": "no responses"}]
    src, out = tmp_path / "pairs.jsonl", tmp_path / "scored.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["score", "--env", "judge", "--input", str(src), "--output", str(out), "--field", "preference=human",
            "--env-arg", f'base_url="{endpoint.base_url}"', "--env-arg", "max_concurrency=4",
            "--env-arg", "parse_retries=1", "--no-progress"]
    src.write_text("".join(json.dumps({"human": None} | r) + "\n" for r in rows))  # (the column in every row)
    assert main(args) == 0
    captured = capsys.readouterr()
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [len(r.get("rewards", [])) for r in scored] == [2, 2, 2, 2, 3, 0]
    assert scored[0]["rewards"][0] > scored[0]["rewards"][1] and scored[1]["rewards"][1] > scored[1]["rewards"][0]
    verdict = scored[0]["reward_info"]["responses"][0]["verdicts"][0]
    assert (verdict["score_1"], verdict["score_2"], verdict["ranking"]) == (4.0, 2.0, 2.0)
    assert scored[3]["reward_info"]["responses"][0]["verdicts"][0]["fallback"] is True
    assert "missing field 'responses'" in scored[5]["reward_info"]["error"]
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["labelled"] == 3 and summary["agreement"] == pytest.approx(2 / 3, abs=1e-4)
    assert "agreement with the rows' preference labels: 0.6667 over 3 labelled pairs" in captured.out


def test_rlvr_eval_with_the_judge_counts_lone_responses_skipped(endpoint, tiny_checkpoint, tmp_path, capsys):
    src = tmp_path / "tasks.jsonl"
    src.write_text(json.dumps({"prompt": "Greet Ada.", "reference": "Hi Ada"}) + "\n"
                   + json.dumps({"prompt": "Greet Bo."}) + "\n")
    assert main(["eval", "--model", str(tiny_checkpoint), "--env", "judge", "--input", str(src), "--max-tokens", "4",
                 "--env-arg", f'base_url="{endpoint.base_url}"', "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["info"] == {"judge/fallback_share": 0.0, "judge/skipped": 0.5}
    assert summary["problems"] == 2 and endpoint.stats["requests"] == 1  # only the row with a reference was judged
