import threading
import time

import pytest

from rlvr.scoring.pool import DeadlinePool


class _Sleeper:
    def __call__(self, payload):
        kind, value = payload
        if kind == "sleep":
            time.sleep(value)
        elif kind == "raise":
            raise ValueError(value)
        elif kind == "die":
            import os

            os._exit(1)
        return value


def make_sleeper():
    return _Sleeper()


def test_results_in_order_with_timeout_error_and_death():
    payloads = [("ok", 1), ("sleep", 60), ("ok", 3), ("raise", "boom"), ("die", None), ("ok", 6)]
    start = time.monotonic()
    with DeadlinePool(make_sleeper, workers=2, timeout=1.5) as pool:
        outcomes = list(pool.map(payloads))
        restarts = pool.restarts
    assert time.monotonic() - start < 30  # the 60 s task was cut, not waited for
    assert [o.index for o in outcomes] == list(range(6))
    assert [o.status for o in outcomes] == ["ok", "timeout", "ok", "error", "error", "ok"]
    assert outcomes[0].value == 1 and outcomes[5].value == 6
    assert "ValueError: boom" in outcomes[3].error
    assert restarts == 2  # the killed sleeper and the dead worker were replaced


def test_works_from_a_non_main_thread():
    # SIGALRM-based timeouts fail here with "signal only works in main thread".
    result = {}

    def run():
        with DeadlinePool(make_sleeper, workers=1, timeout=1.0) as pool:
            result["statuses"] = [o.status for o in pool.map([("sleep", 30), ("ok", 2)])]

    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    assert result["statuses"] == ["timeout", "ok"]


def test_bad_arguments():
    with pytest.raises(ValueError):
        DeadlinePool(make_sleeper, workers=0)
    with pytest.raises(ValueError):
        DeadlinePool(make_sleeper, timeout=0)
