from pathlib import Path

import pandas as pd
import pytest

from kronos_rt import Kronos, KronosTokenizer
from kronos_rt.features import COLUMNS, normalize, time_features
from worker.tools import TAPE

ROOT = Path(__file__).resolve().parents[2]
PARITY = ROOT / "tests" / "fixtures" / "parity"


@pytest.fixture(scope="session")
def tape() -> pd.DataFrame:
    return pd.read_csv(TAPE, parse_dates=["timestamps"])


@pytest.fixture(scope="session")
def parity_pair():
    return Kronos.from_pretrained(PARITY / "model"), KronosTokenizer.from_pretrained(PARITY / "tokenizer")


def window_inputs(tape, starts, lookback, pred_len):
    """Normalized windows and time features of the tape at `starts`, as the engine takes them."""
    xs, xst, yst = [], [], []
    for s in starts:
        ctx = tape.iloc[s:s + lookback]
        fut = tape.iloc[s + lookback:s + lookback + pred_len]
        x, _, _ = normalize(ctx[list(COLUMNS)].values, 5.0)
        xs.append(x)
        xst.append(time_features(ctx["timestamps"].values))
        yst.append(time_features(fut["timestamps"].values))
    return xs, xst, yst
