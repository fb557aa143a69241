from pathlib import Path

import pandas as pd
import pytest

from kronos_rt import Kronos, KronosTokenizer
from worker.tools import TAPE

ROOT = Path(__file__).resolve().parents[2]
PARITY = ROOT / "tests" / "fixtures" / "parity"


@pytest.fixture(scope="session")
def tape() -> pd.DataFrame:
    return pd.read_csv(TAPE, parse_dates=["timestamps"])


@pytest.fixture(scope="session")
def parity_pair():
    return Kronos.from_pretrained(PARITY / "model"), KronosTokenizer.from_pretrained(PARITY / "tokenizer")
