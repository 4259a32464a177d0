"""The SQL environment: the tool protocol, a scripted episode through reset/step, offline
scoring, the execution match, and the shop task set."""

import pytest

from environments.sql import SqlEnvironment
from environments.sql.reward import has_top_level_order_by, results_match
from environments.sql.synthetic import TEACHER_ENV, shop_rows
from environments.sql.tools import format_call, format_table, parse_action
from rlvr.env import TaskError

SHOP = {"schema": "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL, shop TEXT);",
        "rows": {"items": [[1, "pen", 1.5, "A"], [2, "book", 12.0, "B"], [3, "bag", 30.0, "A"], [4, "cup", 4.0, "B"]]}}
TASK = {**SHOP, "question": "What do items cost in shop A?", "gold_sql": "SELECT price FROM items WHERE shop = 'A'"}


@pytest.mark.parametrize("text, tool, query", [
    ('<tool_call>{"name": "sql", "arguments": {"query": "SELECT 1"}}</tool_call>', "sql", "SELECT 1"),
    ('<tool_call>{"name": "sql", "arguments": {"query": "SELECT 1"}}', "sql", "SELECT 1"),  # stop string cut
    ('I will look.\n<tool_call>\n```json\n{"name": "answer", "arguments": {"query": "SELECT 2"}}\n```\n</tool_call>',
     "answer", "SELECT 2"),
    ('<tool_call>{"name": "sql", "arguments": {"query": "SELECT 3"}} and then more words', "sql", "SELECT 3"),
    ('<tool_call>{"name": "sql", "arguments": "{\\"query\\": \\"SELECT 4\\"}"}</tool_call>', "sql", "SELECT 4"),
    ('<tool_call>{"name": "schema", "arguments": {}}</tool_call>', "schema", ""),
    ("The answer:\n```sql\nSELECT 5\n```", "answer", "SELECT 5"),
    ("```sql\nSELECT 6", "answer", "SELECT 6"),
])
def test_tool_calls_parse_robustly(text, tool, query):
    action = parse_action(text)
    assert (action.tool, action.query) == (tool, query)


@pytest.mark.parametrize("text, error", [
    ("no call here", "no tool call"),
    ("<tool_call>not json</tool_call>", "no JSON object"),
    ('<tool_call>{"name": "sql", "arguments": {"query": }}</tool_call>', "not valid JSON"),
    ('<tool_call>{"name": "drop_db", "arguments": {}}</tool_call>', "unknown tool 'drop_db'"),
    ('<tool_call>{"name": "sql", "arguments": {"q": "SELECT 1"}}</tool_call>', "needs a non-empty string"),
    ('<tool_call>["sql"]</tool_call>', "no JSON object"),
])
def test_malformed_calls_are_named(text, error):
    action = parse_action(text)
    assert action.tool == "malformed" and error in action.error


def test_scripted_episode_schema_failure_fix_answer():
    env = SqlEnvironment()
    first = env.reset(TASK)
    assert first.messages[0]["role"] == "system" and "CREATE TABLE items" in first.messages[-1]["content"]
    schema = env.step(format_call("schema"))
    assert "CREATE TABLE items" in schema.observation.text and not schema.done
    failing = env.step(format_call("sql", "SELECT cost FROM items WHERE shop = 'A'"))
    assert failing.observation.text == "Error: no such column: cost"
    assert failing.observation.messages == ({"role": "tool", "content": "Error: no such column: cost"},)
    fixed = env.step(format_call("sql", "SELECT price FROM items WHERE shop = 'A'"))
    assert fixed.observation.text == "price\n1.5\n30.0"
    bad = env.step("let me think")
    assert bad.observation.text.startswith("Error: no tool call")
    final = env.step(format_call("answer", "SELECT price FROM items WHERE shop = 'A' ORDER BY price DESC"))
    assert final.done and final.reward == 1.0  # the gold does not order: any order matches
    log = final.info["turns"]
    assert [t["tool"] for t in log] == ["schema", "sql", "sql", "malformed", "answer"]
    assert [t["error"] for t in log] == [False, True, False, True, False]
    assert final.info["tool_errors"] == 2 and final.info["malformed_calls"] == 1 and final.info["success"]


def test_wrong_answer_and_format_penalty():
    env = SqlEnvironment(format_penalty=0.25)
    env.reset(TASK)
    env.step("oops")
    assert env.step(format_call("answer", "SELECT price FROM items WHERE shop = 'A'")).reward == 0.75
    env.reset(TASK)
    assert env.step(format_call("answer", "SELECT price FROM items")).reward == 0.0
    env.reset(TASK)
    step = env.step(format_call("answer", "SELECT nope FROM items"))
    assert step.done and step.reward == 0.0 and step.info["turns"][-1]["error"]


def test_offline_score_of_a_query_a_turn_or_a_transcript():
    env = SqlEnvironment()
    assert env.score(TASK, "SELECT price FROM items WHERE shop = 'A'").value == 1.0  # a bare query
    assert env.score(TASK, "SELECT price FROM items").value == 0.0
    assert env.score(TASK, format_call("answer", "SELECT price FROM items WHERE shop = 'A'")).value == 1.0
    assert env.score(TASK, "Here:\n```sql\nSELECT price FROM items WHERE shop = 'A'\n```").value == 1.0
    assert env.score(TASK, format_call("sql", "SELECT price FROM items WHERE shop = 'A'")).value == 0.0  # no answer
    transcript = [{"role": "user", "content": "q"}, {"role": "assistant", "content": format_call("sql", "SELECT 1")},
                  {"role": "tool", "content": "1"},
                  {"role": "assistant", "content": format_call("answer", "SELECT price FROM items WHERE shop = 'A'")}]
    assert env.score(TASK, transcript).value == 1.0
    assert env.score(TASK, "DROP TABLE items").value == 0.0


def test_bad_rows_are_named():
    env = SqlEnvironment()
    with pytest.raises(TaskError, match="missing field 'gold_sql'"):
        env.check_task({"question": "q", **SHOP})  # (question is optional: offline scoring needs none)
    with pytest.raises(TaskError, match="'db_path' .* or 'schema'"):
        env.check_task({"question": "q", "gold_sql": "SELECT 1"})
    with pytest.raises(TaskError, match="gold_sql' does not run: no such table: nope"):
        env.check_task({**TASK, "gold_sql": "SELECT * FROM nope"})
    with pytest.raises(TaskError, match="db_path 'missing.sqlite': no such file"):
        env.check_task({"question": "q", "gold_sql": "SELECT 1", "db_path": "missing.sqlite"})
    with pytest.raises(TaskError, match="returns no rows"):
        env.check_task({**TASK, "gold_sql": "SELECT price FROM items WHERE shop = 'Z'"})


def test_execution_match_rules():
    assert results_match([(1, "a"), (2, "b")], [(2, "b"), (1, "a")], ordered=False)
    assert not results_match([(1, "a"), (2, "b")], [(2, "b"), (1, "a")], ordered=True)
    assert results_match([(3,)], [(3.0,)], ordered=True) and results_match([(0.3,)], [(0.1 + 0.2,)], ordered=True)
    assert not results_match([(5551234567,)], [(5551234568,)], ordered=True)  # integers are exact
    assert not results_match([(5551234567,)], [(5551234568.0,)], ordered=True)
    assert not results_match([(1.0,)], [(1.0 + 1e-8,)], ordered=True)  # floats within 1e-9, not 1e-8
    assert not results_match([("3",)], [(3,)], ordered=True)
    assert not results_match([(1,), (1,)], [(1,)], ordered=False)  # duplicates count
    assert not results_match([(1, 2)], [(2, 1)], ordered=False)  # columns keep their order
    assert has_top_level_order_by("SELECT a FROM t ORDER BY a")
    assert not has_top_level_order_by("SELECT a FROM (SELECT a FROM t ORDER BY a LIMIT 3)")
    assert not has_top_level_order_by("SELECT 'order by' FROM t")


def test_table_rendering_is_capped():
    text = format_table(["n"], [(i,) for i in range(50)], max_rows=3, max_chars=1000)
    assert text == "n\n0\n1\n2\n(47 more rows)"
    assert format_table(["a"], [], 5, 100) == "a\n(no rows)"


def test_shop_tasks_hold_out_questions_and_teach_imperfectly():
    train, held = shop_rows(400, seed=0, holdout="exclude", teacher=True), shop_rows(100, seed=0, holdout="only")
    assert not {repr(r["rows"]) for r in train} & {repr(r["rows"]) for r in held}  # by database (the default)
    by_question = shop_rows(100, seed=0, holdout="only", holdout_by="question")
    assert not {r["question"] for r in shop_rows(400, seed=0, holdout="exclude", holdout_by="question")} & {
        r["question"] for r in by_question}
    env = SqlEnvironment(**TEACHER_ENV)
    for row in train[:50] + held[:50]:
        env.check_task(row)
        assert env.score(row, row["gold_sql"]).value == 1.0
    final = [env.score(r, r["messages"]).value for r in train]
    assert 0.1 < sum(final) / len(final) < 0.45  # the careless teacher answers wrongly ~75 % of the time
    assert any(m["content"].startswith("Error: no such column") for r in train for m in r["messages"])
