import pytest

from reward_models.genrm.scripted_server import ScriptedJudgeServer


@pytest.fixture
def endpoint():
    """A real HTTP server on 127.0.0.1 answering as a judge, with scripted answers."""
    with ScriptedJudgeServer(latency=0.0, slow_latency=3.0) as server:
        yield server
