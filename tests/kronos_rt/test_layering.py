"""kronos_rt is a library with no Kafka, Redis or worker code in it."""
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "kronos_rt"


def test_importing_kronos_rt_pulls_no_service_code():
    code = ("import sys, kronos_rt, kronos_rt.naive, kronos_rt.registry;"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('aiokafka', 'redis', 'worker', 'prometheus_client')];"
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_no_source_file_mentions_service_packages():
    for path in PKG.rglob("*.py"):
        text = path.read_text()
        for name in ("import aiokafka", "import redis", "from worker", "import worker", "from redis", "from aiokafka"):
            assert name not in text, f"{path.name} contains {name!r}"
