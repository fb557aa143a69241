"""worker/adapters/kafka_logs.py: aiokafka's lines for expected trouble (retries while a broker is away, the
steps of a rebalance after a freeze) become DEBUG; anything else keeps its level."""
import ast
import logging
from pathlib import Path

import aiokafka
import pytest

from worker.adapters.kafka_logs import EXPECTED, quiet_library_logs


@pytest.fixture(autouse=True)
def quiet():
    quiet_library_logs()


def test_expected_library_lines_are_debug_and_hidden_at_info(caplog):
    caplog.set_level(logging.INFO)
    coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
    coordinator.error("Heartbeat session expired - marking coordinator dead")
    coordinator.error("OffsetCommit failed for group %s due to group error (%s), will rejoin", "g", "UnknownMemberId")
    logging.getLogger("aiokafka").error('Unable connect to "%s:%s": %s', "127.0.0.1", 9092, "refused")
    assert caplog.records == []


def test_they_show_at_debug_when_asked_for(caplog):
    caplog.set_level(logging.DEBUG, logger="aiokafka")
    logging.getLogger("aiokafka.consumer.fetcher").error("Failed fetch messages from %s: %s", 1, "timed out")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("DEBUG", "Failed fetch messages from 1: timed out")]


def test_a_real_error_stays_an_error(caplog):
    caplog.set_level(logging.INFO)
    coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
    coordinator.error("Attempt to join group failed due to fatal error: %s", "InvalidSessionTimeout")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        coordinator.exception("Unexpected error in coordinator routine")
    assert [r.levelname for r in caplog.records] == ["ERROR", "ERROR"]


def test_installing_twice_adds_one_filter():
    quiet_library_logs()
    assert len(logging.getLogger("aiokafka.consumer.group_coordinator").filters) == 1


def _logged_formats() -> dict[str, set[str]]:
    """Format strings of every log call in the installed aiokafka, by logger name."""
    root = Path(aiokafka.__file__).parent
    out: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root.parent).with_suffix("")
        name = "aiokafka" if rel.name == "client" else ".".join(rel.parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "log"
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                out.setdefault(name, set()).add(node.args[0].value)
    return out


def test_every_demoted_line_is_one_the_pinned_aiokafka_logs():
    """A new aiokafka that rewords a line would otherwise bring the noise back unnoticed."""
    logged = _logged_formats()
    for name, formats in EXPECTED.items():
        assert formats <= logged.get(name, set()), (name, sorted(formats - logged.get(name, set())))
