"""The array-level inference engine: what to compute for a batch of windows.

Same answers as the reference forecast procedure (KRONOS.md §5), computed once:
- each series is encoded and prefilled once, then expanded to its sample paths;
- while no window slides (lookback + step <= max_context) keys/values are cached and each
  generated step runs one position per row (kronos_rt/decode.py); once a window slides,
  positions shift and the step is recomputed over the window (exact, like the reference);
- the s2 head runs for the last position only, against cached dependency keys/values;
- windows of different lengths share one call: rows are right-padded (causal attention
  never looks right) and each row keeps its own positions and mask.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .decode import DecodePlan
from .features import denormalize, fill_missing, normalize, time_features
from .model import Kronos
from .modules import fill_rows
from .packing import prepare
from .sampling import SamplingParams, sample
from .tokenizer import KronosTokenizer

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_device(device=None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device} requested but CUDA is not available")
        if device.index is None:  # pin to one GPU: `cuda` means the current one
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}") from None


@dataclass
class Forecast:
    mean: np.ndarray  # [pred_len, 6] de-normalized (open, high, low, close, volume, amount)
    quantiles: dict[float, np.ndarray] = field(default_factory=dict)  # level -> [pred_len, 6]
    paths: np.ndarray | None = None  # [sample_count, pred_len, 6] when asked


class Engine:
    """Forecasts batches of windows with one model and tokenizer on one device.

    The Engine owns the model and tokenizer it is given: it moves them to its device and
    dtype and prepares them in place (fused projections; on CPU with `pack_weights`,
    oneDNN-prepacked weights, see kronos_rt/packing.py). Their state_dicts stay as loaded.
    """

    def __init__(self, model: Kronos, tokenizer: KronosTokenizer, device=None, dtype=None,
                 max_context: int = 512, clip: float = 5.0, tokenizer_dtype=torch.float32,
                 pack_weights: bool = True):
        if max_context < 1:
            raise ValueError(f"max_context must be >= 1, got {max_context}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        # The tokenizer stays in float32 by default: it is cheap, and its sign decisions
        # (the token ids) are the model's whole input.
        self.tokenizer_dtype = resolve_dtype(tokenizer_dtype, self.device)
        self.model = model.to(self.device, self.dtype).eval()
        self.tokenizer = tokenizer.to(self.device, self.tokenizer_dtype).eval()
        # Fused projections everywhere, prepacked oneDNN weights on CPU (kronos_rt/packing.py).
        pack = pack_weights and self.device.type == "cpu"
        prepare(self.model, pack)
        prepare(self.tokenizer, pack)
        self.max_context = int(max_context)
        self.clip = float(clip)

    # -- raw bars in, de-normalized forecasts out ---------------------------------------
    def forecast(self, bars, x_times, y_times, pred_len: int, sampling: SamplingParams = SamplingParams(),
                 quantiles=(), return_paths: bool = False) -> list[Forecast]:
        """bars[i]: [L_i, 6] raw (NaN = missing volume/amount); x_times[i]: datetime64 [L_i];
        y_times[i]: datetime64 [pred_len]."""
        if not (len(bars) == len(x_times) == len(y_times)):
            raise ValueError("bars, x_times and y_times must have the same length")
        xs, stats, xst, yst = [], [], [], []
        for i, (b, xt, yt) in enumerate(zip(bars, x_times, y_times)):
            filled = fill_missing(b)
            if len(xt) != len(filled):
                raise ValueError(f"series {i}: {len(filled)} bars but {len(xt)} timestamps")
            if np.isnan(filled).any():
                raise ValueError(f"series {i}: NaN in price columns")
            x, mean, std = normalize(filled, self.clip)
            xs.append(x)
            stats.append((mean, std))
            xst.append(time_features(xt))
            yst.append(time_features(yt))
        keep_paths = return_paths or bool(quantiles)
        mean_n, paths_n = self.forecast_arrays(xs, xst, yst, pred_len, sampling, return_paths=keep_paths)
        out = []
        for i, (mean, std) in enumerate(stats):
            f = Forecast(mean=denormalize(mean_n[i], mean, std).astype(np.float64))
            if paths_n is not None:
                paths = denormalize(paths_n[i], mean, std).astype(np.float64)
                if sampling.sample_count > 1:
                    f.quantiles = {float(q): np.quantile(paths, q, axis=0) for q in quantiles}
                if return_paths:
                    f.paths = paths
            out.append(f)
        return out

    # -- the array-level engine -----------------------------------------------------------
    @torch.inference_mode()
    def forecast_arrays(self, x, x_stamp, y_stamp, pred_len: int, sampling: SamplingParams = SamplingParams(),
                        return_paths: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Generate pred_len steps for B series.

        x: B arrays [L_i, 6] of normalized, clipped rows (or one [B, L, 6] array);
        x_stamp: B arrays [L_i, 5] of time features; y_stamp: B arrays [pred_len, 5].
        Returns the mean over sample paths of the decoded, still-normalized rows,
        [B, pred_len, 6], and the paths [B, S, pred_len, 6] when return_paths.
        """
        if pred_len < 1:
            raise ValueError(f"pred_len must be >= 1, got {pred_len}")
        B = len(x)
        if B == 0:
            return np.zeros((0, pred_len, 6), np.float32), (np.zeros((0, sampling.sample_count, pred_len, 6), np.float32) if return_paths else None)
        if not (len(x_stamp) == B and len(y_stamp) == B):
            raise ValueError("x, x_stamp and y_stamp must hold the same number of series")
        lengths = np.array([len(xi) for xi in x], dtype=np.int64)
        if (lengths < 1).any():
            raise ValueError("every window needs at least one bar")
        for i in range(B):
            if len(x_stamp[i]) != lengths[i]:
                raise ValueError(f"series {i}: {lengths[i]} rows but {len(x_stamp[i])} time stamps")
            if len(y_stamp[i]) != pred_len:
                raise ValueError(f"series {i}: {len(y_stamp[i])} future time stamps for pred_len {pred_len}")
        S, P, C = sampling.sample_count, pred_len, self.max_context
        L = int(lengths.max())
        dev = self.device

        # Stage inputs on the host (pinned on GPU so the copies are asynchronous).
        xb = np.zeros((B, L, 6), np.float32)
        stamps = np.zeros((B, L + P, 5), np.int64)
        for i in range(B):
            n = lengths[i]
            xb[i, :n] = x[i]
            stamps[i, :n] = x_stamp[i]
            stamps[i, n:n + P] = y_stamp[i]
        xb_t, stamps_t, len_t = (self._to_device(a) for a in (xb, stamps, lengths))

        s1, s2 = self.tokenizer.encode(xb_t.to(self.tokenizer_dtype))
        seq1 = torch.zeros((B, L + P), dtype=torch.long, device=dev)
        seq2 = torch.zeros_like(seq1)
        seq1[:, :L], seq2[:, :L] = s1, s2

        generator = None
        if sampling.seed is not None and not sampling.greedy:
            generator = torch.Generator(device=dev).manual_seed(int(sampling.seed))
        uniform = bool((lengths == lengths[0]).all())
        rows = torch.arange(B * S, device=dev)
        cached = bool((lengths + P - 1 <= C).all())  # no window slides before the last model step

        # Step 0: one pass per series over its window, its keys/values written once into
        # each of its S paths' rows.
        starts0 = np.maximum(lengths - C, 0)
        if cached:
            cache = self.model.new_cache(B * S, L + P, dev, self.dtype)
            h = self.model.forward_hidden(seq1[:, :L], seq2[:, :L], stamps_t[:, :L], cache=cache)
            wlen0 = len_t
        else:
            cache = None
            h, wlen0 = self._window_pass(seq1, seq2, stamps_t, starts0, lengths)
        h_last = h[torch.arange(B, device=dev), wlen0 - 1]
        dep_k, dep_v = self.model.dep_kv(h)
        read = dep_k.shape[2]  # dependency keys in use
        key_mask = None if uniform else self._key_mask(wlen0, read)
        time_emb = rope = None
        if cached:  # room for the dependency keys/values of every generated position
            shape = (B * S, dep_k.shape[1], L + P, dep_k.shape[3])
            dep_k, dep_v = self._rows_of(dep_k, shape), self._rows_of(dep_v, shape)
            if not uniform:  # a short row's mask reaches positions not yet written
                cache.clear_from(L)
                dep_k[:, :, L:].zero_()
                dep_v[:, :, L:].zero_()
            # Per-call tables, so that a decode step only indexes them.
            future = stamps_t[torch.arange(B, device=dev)[:, None], len_t[:, None] + torch.arange(P, device=dev)]
            time_emb = self.model.time_emb(future)  # [B, P, d]: step k embeds the time of position len + k - 1
            rope = self.model.rope_table(L + P, dev)
        elif S > 1:
            dep_k, dep_v = dep_k.repeat_interleave(S, dim=0), dep_v.repeat_interleave(S, dim=0)
        if S > 1:
            h_last, seq1, seq2, stamps_t, len_t = (
                t.repeat_interleave(S, dim=0) for t in (h_last, seq1, seq2, stamps_t, len_t))
            time_emb = None if time_emb is None else time_emb.repeat_interleave(S, dim=0)
            key_mask = None if key_mask is None else key_mask.repeat_interleave(S, dim=0)
        lengths_s = np.repeat(lengths, S)

        # Cached steps run flat (kronos_rt/decode.py); the heads too, so that every step
        # of a call takes one path.
        plan = DecodePlan(self.model) if cached else None
        heads = plan or self.model
        for k in range(P):
            if k > 0:
                if cached:
                    read = L + k
                    if uniform:  # all rows at position L + k - 1: slices, not gathers
                        at = L + k - 1
                        cos, sin, mask = rope[0][at], rope[1][at], None
                        ids1, ids2 = seq1[:, at], seq2[:, at]
                    else:
                        pos = len_t + (k - 1)  # each row's token generated at step k-1
                        at = (rows, pos)
                        cos, sin = rope[0][pos][:, None, None], rope[1][pos][:, None, None]
                        mask = key_mask = self._key_mask(pos + 1, read)  # positions 0..pos
                        ids1, ids2 = seq1[rows, pos], seq2[rows, pos]
                    h_last = plan.hidden(ids1, ids2, time_emb[:, k - 1], cache, at, read, cos, sin, mask)
                    plan.write_dep(h_last, dep_k, dep_v, at)
                else:
                    starts = np.maximum(lengths_s + k - C, 0)
                    h, wlen = self._window_pass(seq1, seq2, stamps_t, starts, lengths_s + k)
                    h_last = h[rows, wlen - 1]
                    dep_k, dep_v = self.model.dep_kv(h)
                    read = dep_k.shape[2]
                    key_mask = None if uniform else self._key_mask(wlen, read)
            new1 = sample(heads.s1_logits(h_last), sampling, generator)
            logits2 = heads.s2_logits(new1, h_last, dep_k[:, :, :read], dep_v[:, :, :read], key_mask)
            new2 = sample(logits2, sampling, generator)
            if uniform:
                seq1[:, L + k], seq2[:, L + k] = new1, new2
            else:
                at = len_t + k
                seq1[rows, at], seq2[rows, at] = new1, new2

        # Decode each row's last min(n + P, C) tokens; keep the last P rows.
        total = lengths_s + P
        starts = np.maximum(total - C, 0)
        idx, wlen = self._window_index(starts, total)
        z = self.tokenizer.decode(seq1.gather(1, idx), seq2.gather(1, idx))
        take = (wlen - P)[:, None] + torch.arange(P, device=dev)[None, :]
        out = z.gather(1, take[..., None].expand(-1, -1, z.shape[-1])).float()
        paths = out.reshape(B, S, P, -1).cpu().numpy()
        return paths.mean(axis=1), (paths if return_paths else None)

    # -- helpers --------------------------------------------------------------------------
    def _to_device(self, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(a)
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    def _window_index(self, starts: np.ndarray, ends: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather indices for windows [start, end) per row, right-padded by repeating the last
        index (causal attention never sees it), and the window lengths."""
        wlen = ends - starts
        W = int(wlen.max())
        idx = starts[:, None] + np.minimum(np.arange(W)[None, :], wlen[:, None] - 1)
        return self._to_device(idx.astype(np.int64)), self._to_device(wlen.astype(np.int64))

    def _window_pass(self, seq1, seq2, stamps, starts: np.ndarray, ends: np.ndarray):
        """Full pass over each row's window [start, end) (positions restart at 0, as in the reference)."""
        idx, wlen = self._window_index(starts, ends)
        st = stamps.gather(1, idx[..., None].expand(-1, -1, stamps.shape[-1]))
        h = self.model.forward_hidden(seq1.gather(1, idx), seq2.gather(1, idx), st)
        return h, wlen

    @staticmethod
    def _rows_of(src: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """A new [B * S, n, T_max, d] buffer whose first T positions repeat src [B, n, T, d]."""
        dst = src.new_empty(shape)
        fill_rows(dst, src)
        return dst

    @staticmethod
    def _key_mask(wlen: torch.Tensor, T: int) -> torch.Tensor:
        return (torch.arange(T, device=wlen.device)[None, :] < wlen[:, None])[:, None, None, :]
