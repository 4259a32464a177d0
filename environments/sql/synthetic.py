"""A task set the project writes itself: questions about a small shop database, for tests and the
SQL experiment (``rlvr-train experiment=sql``).

Each row carries its own small database (``schema`` + ``rows``: customers, products, orders,
drawn from the row's seed) and a question of one of five kinds (counts and lookups: customers in
a city, a product's price, products of a category, customers' names, products under a price),
with its gold query. The held-out questions (a fixed share of all question texts) are never
trained on, so evaluation asks about cities, products and prices the policy has not been asked
about, against databases it has not seen.

``teacher=True`` adds a demonstration transcript (``messages``) for the warm start, from an
imperfect teacher: it runs a query, reads the result and answers; with probability ``mistakes``
it first misnames a column, reads the error and fixes the query; with probability ``careless``
it forgets the WHERE clause and answers with it (a wrong answer), standing in for distilled
data from a weaker model that GRPO then improves on.
"""

from __future__ import annotations

import random

from environments.sql import SqlEnvironment
from environments.sql.tools import format_call
from rlvr.env import in_split

SCHEMA = ("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, city TEXT);\n"
          "CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT, category TEXT, price INTEGER);\n"
          "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER, product_id INTEGER, quantity INTEGER);")
CITIES = ["Oslo", "Lima", "Rome", "Kyiv", "Doha", "Baku", "Riga", "Bern", "Oran", "Kobe", "Nice", "Cork", "Graz",
          "Linz", "Pisa", "Turku", "Malmo", "Porto", "Quito", "Sucre", "Tunis", "Hanoi", "Perth", "Delhi"]
NAMES = ["Ana", "Ben", "Caro", "Dev", "Eli", "Fay", "Gus", "Hal", "Ida", "Jon", "Kim", "Lea", "Max", "Nia", "Oli",
         "Pam", "Raj", "Sue", "Tom", "Uma", "Vic", "Wes", "Yan", "Zoe"]
ITEMS = ["pen", "cup", "bag", "hat", "mug", "map", "box", "fan", "jar", "kit", "lamp", "sock", "tape", "vase"]
COLOURS = ["red", "blue", "green", "black", "white", "pink"]
CATEGORIES = ["office", "kitchen", "travel", "home", "garden"]

# The environment options of the SQL experiment (configs/data/shop.yaml sets the same env_args):
# no system prompt and no schema in the prompt, so that the tiny policy's context stays short.
TEACHER_ENV = {"schema_in_prompt": False, "system_prompt": None, "max_turns": 4}


def _database(rng: random.Random) -> dict[str, list[list]]:
    cities = rng.sample(CITIES, 4)
    customers = [[i + 1, name, rng.choice(cities)] for i, name in enumerate(rng.sample(NAMES, 8))]
    products = [[i + 1, f"{rng.choice(COLOURS)} {item}", rng.choice(CATEGORIES), rng.randint(1, 40)]
                for i, item in enumerate(rng.sample(ITEMS, 8))]
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
    price = rng.choice([p[3] for p in db["products"]]) + rng.choice([0, 1])
    return (f"Which products cost less than {price}?", f"SELECT name FROM products WHERE price < {price}",
            "SELECT name FROM products", f"SELECT name FROM products WHERE cost < {price}")


def held_out(question: str) -> bool:
    """A fixed, pseudo-random sixth of all question texts, never trained on."""
    return random.Random(f"sql:{question}").random() < 1 / 6


def shop_rows(n: int, seed: int = 0, holdout: str | None = None, teacher: bool = False, mistakes: float = 0.2,
              careless: float = 0.4) -> list[dict]:
    """``n`` shop questions (see the module docstring); ``holdout``: "exclude" draws only training
    questions, "only" only held-out ones; ``teacher``: add the imperfect teacher's transcript."""
    in_split(False, holdout)  # checks the option before any work
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        db = _database(rng)
        question, gold, wrong, misnamed = _question(rng, db)
        if not in_split(held_out(question), holdout):
            continue
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
