"""Hostile SQL against the mock database: each gets an error observation or a timeout, and the
source database file is byte-identical afterwards."""

import sqlite3
import time

import pytest

from environments.sql import SqlEnvironment
from environments.sql.database import QueryError, QueryLimits, open_database, run_query
from environments.sql.tools import format_call


@pytest.fixture()
def shop(tmp_path):
    """A small database file the tests own."""
    path = tmp_path / "shop.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL);"
                       "INSERT INTO items VALUES (1, 'pen', 1.5), (2, 'book', 12.0), (3, 'bag', 30.0);")
    conn.commit()
    conn.close()
    return path


TASK = {"question": "How many items?", "gold_sql": "SELECT COUNT(*) FROM items"}


def episode(shop, query: str):
    env = SqlEnvironment(timeout=1.0, db_root=str(shop.parent))
    env.reset({**TASK, "db_path": shop.name})
    start = time.monotonic()
    step = env.step(format_call("sql", query))
    return step.observation.text, time.monotonic() - start


@pytest.mark.parametrize("query, expect", [
    ("ATTACH DATABASE '{host}' AS host", "not authorized"),
    ("SELECT load_extension('/usr/lib/x86_64-linux-gnu/libsqlite3.so.0')", "not authorized"),
    ("DROP TABLE items", "not authorized"),
    ("UPDATE items SET price = 0", "not authorized"),
    ("DELETE FROM items", "not authorized"),
    ("INSERT INTO items VALUES (4, 'x', 1)", "not authorized"),
    ("CREATE TABLE t (x)", "not authorized"),
    ("PRAGMA writable_schema = ON", "not authorized"),
    ("PRAGMA query_only = OFF", "not authorized"),
    ("SELECT 1; DROP TABLE items", "one statement at a time"),
    ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT COUNT(*) FROM r", "timed out"),
    ("SELECT COUNT(*) FROM items a, items b, items c, items d, items e, items f, items g, items h, items i, "
     "items j, items k, items l, items m, items n, items o, items p, items q, items r, items s, items t", "timed out"),
    ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 200000) "
     "SELECT n, printf('%.50c', 'x') FROM r", "result too large"),
])
def test_hostile_sql_gets_an_error_and_leaves_the_file_alone(shop, query, expect, tmp_path):
    host = tmp_path / "host.sqlite"
    before = shop.read_bytes()
    text, seconds = episode(shop, query.format(host=host))
    assert text.startswith("Error:") and expect in text, text
    assert seconds < 5
    assert shop.read_bytes() == before and not host.exists()


def test_ten_megabyte_result_is_refused(shop):
    conn = open_database({"db_path": shop.name}, str(shop.parent))
    query = "SELECT printf('%.50000c', 'x') FROM items a, items b, items c, items d"  # 81 rows x 50 KB
    with pytest.raises(QueryError, match="too large|too big"):
        run_query(conn, query, QueryLimits(timeout_s=5))


def test_episodes_get_private_copies(shop):
    a, b = (open_database({"db_path": shop.name}, str(shop.parent)) for _ in range(2))
    a.set_authorizer(None)
    a.execute("PRAGMA query_only = OFF")
    a.execute("DELETE FROM items")  # even with the locks taken off one copy...
    assert run_query(b, "SELECT COUNT(*) FROM items").rows == [(3,)]  # ...the next episode's is whole


def test_inline_schema_and_rows():
    conn = open_database({"schema": "CREATE TABLE t (a INTEGER, b TEXT);", "rows": {"t": [[1, "x"], [2, "y"]]}})
    assert run_query(conn, "SELECT b FROM t WHERE a = 2").rows == [("y",)]
    with pytest.raises(QueryError, match="not authorized"):
        run_query(conn, "DELETE FROM t")


def test_schema_pragmas_are_allowed(shop):
    conn = open_database({"db_path": shop.name}, str(shop.parent))
    assert [r[1] for r in run_query(conn, "PRAGMA table_info(items)").rows] == ["id", "name", "price"]
