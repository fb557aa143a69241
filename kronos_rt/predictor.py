"""Drop-in replacement for the reference `KronosPredictor` (pandas in, pandas out).

Same inputs, outputs and error messages as the reference, with clear errors where it is
silent (pred_len < 1, empty frames, non-monotonic timestamps). The work is done by
`Engine`, so these outputs are the engine's outputs. Beyond the reference:
`predict_paths` returns the sample paths and quantile bands.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .engine import Engine
from .features import COLUMNS, PRICE_COLUMNS, denormalize, normalize, time_features
from .sampling import SamplingParams

# The reference predictor's names for features.COLUMNS (kept: its attributes below use them).
PRICE_COLS = list(PRICE_COLUMNS)
VOL_COL, AMT_COL = COLUMNS[4:]
ALL_COLS = list(COLUMNS)


@dataclass
class PathForecast:
    mean: pd.DataFrame  # as predict() returns
    paths: np.ndarray  # [sample_count, pred_len, 6] de-normalized
    quantiles: dict[float, pd.DataFrame]  # level -> frame like `mean`


def _as_datetime_index(ts, what: str) -> pd.DatetimeIndex:
    idx = pd.DatetimeIndex(pd.to_datetime(pd.Series(ts).reset_index(drop=True)))
    if len(idx) and not idx.is_monotonic_increasing:
        raise ValueError(f"{what} must be sorted in increasing time order")
    return idx


class KronosPredictor:
    def __init__(self, model, tokenizer, device=None, max_context: int = 512, clip: float = 5, dtype=None,
                 pack_weights: bool = True):
        self.engine = Engine(model, tokenizer, device=device, dtype=dtype, max_context=max_context, clip=clip,
                             pack_weights=pack_weights)
        self.model, self.tokenizer = self.engine.model, self.engine.tokenizer
        self.device, self.max_context, self.clip = self.engine.device, max_context, clip
        self.price_cols, self.vol_col, self.amt_vol = PRICE_COLS, VOL_COL, AMT_COL

    @classmethod
    def from_registry(cls, spec: str, device=None, *, root=None, max_context: int | None = None,
                      **kwargs) -> "KronosPredictor":
        """A predictor over a model registry version: "NAME@1.2.0", "NAME@latest" or "NAME",
        from $KRONOS_RT_REGISTRY (or ~/.kronos-rt/registry, or `root`), with the version's own
        tokenizer and context length. `.version` says which version it is (and whether it has
        random weights); RegistryError names what the registry holds when spec is not there."""
        from .model import Kronos
        from .registry import Registry
        from .tokenizer import KronosTokenizer

        mv = Registry(root).resolve(spec)
        predictor = cls(Kronos.from_pretrained(mv.model_dir), KronosTokenizer.from_pretrained(mv.tokenizer_dir),
                        device=device, max_context=max_context or mv.max_context,
                        **kwargs)
        predictor.version = mv
        return predictor

    # -- input preparation, mirroring the reference ---------------------------------------
    def _prepare(self, df, x_timestamp, y_timestamp, pred_len, where: str = ""):
        """-> (x normalized [L,6] f32, mean, std, x_stamp, y_stamp, y index). `where` is
        '' for predict() and ' at index i' for predict_batch(), to word errors as the reference."""
        at = where
        if not isinstance(df, pd.DataFrame):
            raise ValueError(f"Input at index{at[9:]} is not a pandas DataFrame." if at else "Input must be a pandas DataFrame.")
        if not all(c in df.columns for c in PRICE_COLS):
            raise ValueError(f"DataFrame{at} is missing price columns {PRICE_COLS}." if at
                             else f"Price columns {PRICE_COLS} not found in DataFrame.")
        if len(df) == 0:
            raise ValueError(f"DataFrame{at} is empty: at least one bar of history is needed.")
        df = df.copy()
        if VOL_COL not in df.columns:
            df[VOL_COL] = 0.0
            df[AMT_COL] = 0.0
        if AMT_COL not in df.columns:
            df[AMT_COL] = df[VOL_COL] * df[PRICE_COLS].mean(axis=1)
        if df[ALL_COLS].isnull().values.any():
            raise ValueError(f"DataFrame{at} contains NaN values in price or volume columns." if at
                             else "Input DataFrame contains NaN values in price or volume columns.")
        x_idx = _as_datetime_index(x_timestamp, f"x_timestamp{at}")
        y_idx = _as_datetime_index(y_timestamp, f"y_timestamp{at}")
        x = df[ALL_COLS].values.astype(np.float32)
        if x.shape[0] != len(x_idx):
            raise ValueError(f"Length of DataFrame{at} does not match the length of x_timestamp"
                             f"{' at the same index' if at else ''}.")
        if len(y_idx) != pred_len:
            raise ValueError(f"Length of y_timestamp{at} does not match pred_len.")
        if len(x_idx) and len(y_idx) and y_idx[0] <= x_idx[-1]:
            raise ValueError(f"y_timestamp{at} must start after the last x_timestamp.")
        if not np.isfinite(x).all():
            raise ValueError(f"DataFrame{at} contains infinite values in price or volume columns.")
        xn, mean, std = normalize(x, self.clip)
        return xn, mean, std, time_features(x_idx.values), time_features(y_idx.values), y_timestamp

    @staticmethod
    def _check_pred_len(pred_len):
        if not isinstance(pred_len, (int, np.integer)) or pred_len < 1:
            raise ValueError(f"pred_len must be a positive integer, got {pred_len!r}")

    def _run(self, prepared, pred_len, T, top_k, top_p, sample_count, return_paths=False, seed=None):
        sampling = SamplingParams(temperature=T, top_k=top_k, top_p=top_p, sample_count=sample_count, seed=seed)
        xs, _, _, xst, yst, _ = zip(*prepared)
        return self.engine.forecast_arrays(list(xs), list(xst), list(yst), pred_len, sampling, return_paths=return_paths)

    @staticmethod
    def _frame(values, mean, std, y_timestamp) -> pd.DataFrame:
        preds = denormalize(values, mean, std)
        return pd.DataFrame(preds, columns=ALL_COLS, index=y_timestamp)

    # -- public API -----------------------------------------------------------------------
    def predict(self, df, x_timestamp, y_timestamp, pred_len, T=1.0, top_k=0, top_p=0.9, sample_count=1,
                verbose=True) -> pd.DataFrame:
        self._check_pred_len(pred_len)
        prep = self._prepare(df, x_timestamp, y_timestamp, pred_len)
        mean_n, _ = self._run([prep], pred_len, T, top_k, top_p, sample_count)
        return self._frame(mean_n[0], prep[1], prep[2], prep[5])

    def predict_batch(self, df_list, x_timestamp_list, y_timestamp_list, pred_len, T=1.0, top_k=0, top_p=0.9,
                      sample_count=1, verbose=True) -> list[pd.DataFrame]:
        if not all(isinstance(v, (list, tuple)) for v in (df_list, x_timestamp_list, y_timestamp_list)):
            raise ValueError("df_list, x_timestamp_list, y_timestamp_list must be list or tuple types.")
        if not (len(df_list) == len(x_timestamp_list) == len(y_timestamp_list)):
            raise ValueError("df_list, x_timestamp_list, y_timestamp_list must have consistent lengths.")
        if len(df_list) == 0:
            raise ValueError("df_list is empty: give at least one series.")
        self._check_pred_len(pred_len)
        prepared = [self._prepare(df, xt, yt, pred_len, where=f" at index {i}")
                    for i, (df, xt, yt) in enumerate(zip(df_list, x_timestamp_list, y_timestamp_list))]
        if len({p[0].shape[0] for p in prepared}) != 1:
            raise ValueError("All series must have the same historical length, please check the input DataFrames.")
        mean_n, _ = self._run(prepared, pred_len, T, top_k, top_p, sample_count)
        return [self._frame(mean_n[i], p[1], p[2], p[5]) for i, p in enumerate(prepared)]

    def predict_paths(self, df, x_timestamp, y_timestamp, pred_len, T=1.0, top_k=0, top_p=0.9, sample_count=16,
                      quantiles=(0.1, 0.5, 0.9), seed=None) -> PathForecast:
        """Like predict(), plus the sample paths and quantile bands over them."""
        self._check_pred_len(pred_len)
        prep = self._prepare(df, x_timestamp, y_timestamp, pred_len)
        mean_n, paths_n = self._run([prep], pred_len, T, top_k, top_p, sample_count, return_paths=True, seed=seed)
        _, mean, std, _, _, y_ts = prep
        paths = denormalize(paths_n[0], mean, std)
        bands = {float(q): pd.DataFrame(np.quantile(paths, q, axis=0), columns=ALL_COLS, index=y_ts) for q in quantiles}
        return PathForecast(mean=self._frame(mean_n[0], mean, std, y_ts), paths=paths, quantiles=bands)
