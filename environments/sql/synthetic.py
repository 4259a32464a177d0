"""A task set the project writes itself: questions about a small shop database, for tests and the
SQL experiment (``rlvr-train experiment=sql``).

Each row carries its own small database (``schema`` + ``rows``: customers, products, orders,
drawn from the row's seed) and a question of one of five kinds (counts and lookups: customers in
a city, a product's price, products of a category, customers' names, products under a price),
with its gold query; a question whose answer is a count of 0 or no rows is never asked (a guess
or a filter that matched nothing by mistake would be paid). A fixed quarter of all tasks is held out, never trained on: by database
(``holdout_by="database"``: the evaluation's databases never occur in training, its question
texts do) or by question (``"question"``: its question texts never occur in training either;
a city, product or price in them may occur only in other kinds of question, or not at all).

``teacher=True`` adds a demonstration transcript (``messages``) for the warm start, from an
imperfect teacher: it runs a query, reads the result and answers; with probability ``mistakes``
it first misnames a column, reads the error and fixes the query; with probability ``careless``
it forgets the WHERE clause and answers with it (a wrong answer), standing in for distilled
data from a weaker model that GRPO then improves on.
"""

from __future__ import annotations

import random

import sqlite3

from environments.sql import SqlEnvironment
from environments.sql.reward import degenerate
from environments.sql.tools import format_call
from rlvr.env import in_split

SCHEMA = ("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, city TEXT);\n"
          "CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT, category TEXT, price INTEGER);\n"
          "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER, product_id INTEGER, quantity INTEGER);")
# Small vocabularies: a value in a question is one of a few, so a policy can tie it to the same
# value in its query (the tiny byte-level policy cannot yet copy arbitrary text that far).
CITIES = ["Oslo", "Lima", "Rome", "Kyiv", "Doha", "Baku", "Riga", "Bern"]
NAMES = ["Ana", "Ben", "Caro", "Dev", "Eli", "Fay", "Gus", "Hal", "Ida", "Jon", "Kim", "Lea"]
ITEMS = ["pen", "cup", "bag", "hat", "mug", "map", "box", "fan"]
PRICES = [10, 15, 20, 25, 30, 35]
CATEGORIES = ["office", "kitchen", "travel", "home", "garden"]

# The environment options of the SQL experiment (configs/data/shop.yaml sets the same env_args):
# no system prompt and no schema in the prompt, so that the tiny policy's context stays short.
TEACHER_ENV = {"schema_in_prompt": False, "system_prompt": None, "max_turns": 4}


def _database(rng: random.Random) -> dict[str, list[list]]:
    cities = rng.sample(CITIES, 4)
    customers = [[i + 1, name, rng.choice(cities)] for i, name in enumerate(rng.sample(NAMES, 8))]
    products = [[i + 1, item, rng.choice(CATEGORIES), rng.randint(1, 40)] for i, item in enumerate(rng.sample(ITEMS, 8))]
    orders = [[i + 1, rng.randint(1, 8), rng.randint(1, 8), rng.randint(1, 5)] for i in range(10)]
    return {"customers": customers, "products": products, "orders": orders}


def _question(rng: random.Random, db: dict[str, list[list]]) -> tuple[str, str, str, str]:
    """-> (question, gold SQL, the careless teacher's SQL, a query with a misnamed column)."""
    kind = rng.randrange(5)
    if kind in (0, 3):
        city = rng.choice([c[2] for c in db["customers"]] + [rng.choice(CITIES)])
        what, ask = ("COUNT(*)", f"How many customers live in {city}?") if kind == 0 else \
            ("name", f"Which customers live in {city}?")
        return (ask, f"SELECT {what} FROM customers WHERE city = '{city}'", f"SELECT {what} FROM customers",
                f"SELECT {what} FROM customers WHERE town = '{city}'")
    if kind == 1:
        name = rng.choice(db["products"])[1]
        return (f"What is the price of the {name}?", f"SELECT price FROM products WHERE name = '{name}'",
                "SELECT price FROM products", f"SELECT cost FROM products WHERE name = '{name}'")
    if kind == 2:
        category = rng.choice(CATEGORIES)
        return (f"How many {category} products are there?",
                f"SELECT COUNT(*) FROM products WHERE category = '{category}'", "SELECT COUNT(*) FROM products",
                f"SELECT COUNT(*) FROM products WHERE type = '{category}'")
    price = rng.choice(PRICES)
    return (f"Which products cost less than {price}?", f"SELECT name FROM products WHERE price < {price}",
            "SELECT name FROM products", f"SELECT name FROM products WHERE cost < {price}")


def _gold_rows(gold_sql: str, db: dict[str, list[list]]) -> list:
    """The gold query's result on a task's database (built here: the generator's own data)."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(SCHEMA)
        for table, rows in db.items():
            conn.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(rows[0]))})", rows)
        return conn.execute(gold_sql).fetchall()
    finally:
        conn.close()


def held_out(question: str, db: dict, by: str) -> bool:
    """Whether a task is in the fixed held-out quarter (by its database or its question text)."""
    key = question if by == "question" else repr(sorted(db.items()))
    return random.Random(f"sql:{key}").random() < 1 / 4


def shop_rows(n: int, seed: int = 0, holdout: str | None = None, holdout_by: str = "database", teacher: bool = False,
              mistakes: float = 0.2, careless: float = 0.75) -> list[dict]:
    """Questions about a small shop database, each row with its own (the SQL experiment's task).

    ``holdout``: "exclude" draws only training tasks, "only" only held-out ones (``holdout_by``
    database or question); ``teacher``: add the imperfect teacher's transcript (module docstring)."""
    in_split(False, holdout)  # checks the options before any work
    if holdout_by not in ("database", "question"):
        raise ValueError(f"holdout_by must be 'database' or 'question', not {holdout_by!r}")
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        db = _database(rng)
        question, gold, wrong, misnamed = _question(rng, db)
        if not in_split(held_out(question, db, holdout_by), holdout) or degenerate(_gold_rows(gold, db)):
            continue  # (a count of 0 or an empty list: a guess, or a filter matching nothing, would pay)
        row = {"question": question, "gold_sql": gold, "schema": SCHEMA, "rows": db}
        if teacher:
            row["messages"] = demonstration(row, rng, wrong, misnamed, mistakes, careless)
        rows.append(row)
    return rows


def demonstration(row: dict, rng: random.Random, careless_sql: str, misnamed_sql: str, mistakes: float,
                  careless: float) -> list[dict]:
    """The teacher's episode, played against the real environment (so every tool result is what
    the policy will see): chat messages from the first prompt to the final answer."""
    env = SqlEnvironment(**TEACHER_ENV)
    first = env.reset(row)
    final = careless_sql if rng.random() < careless else row["gold_sql"]
    turns = ([format_call("sql", misnamed_sql)] if rng.random() < mistakes else []) + [format_call("sql", final)]
    turns.append(format_call("answer", final))
    messages = list(first.messages)
    for turn in turns:
        messages.append({"role": "assistant", "content": turn})
        step = env.step(turn)
        messages += list(step.observation.messages)
    return messages
