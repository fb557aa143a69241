"""Array-level inference engine: what to compute for a batch of windows.

Same answers as the reference forecast procedure (docs/MODEL.md, 'Forecast procedure'),
computed once. `Engine.forecast_arrays` runs named stages over one `_Generation` state:

- prefill: each series is encoded and run through the model once (its keys/values written
  into the rows of its sample paths);
- expand: the per-series state is repeated for the S sample paths of each series;
- cached step: while no window slides (lookback + step <= max_context) each generated step
  runs one position per row against the cached keys/values (kronos_rt/decode.py);
- windowed step: once a window slides, positions shift and the step is recomputed over the
  window (exact, like the reference);
- detokenize: each row's last tokens back to normalized rows, averaged over paths (the
  tokenizer's last decoder block computes outputs for the kept positions only).

The s2 head runs for the last position only, against cached dependency keys/values.
Windows of different lengths share one call: rows are right-padded (causal attention
never looks right) and each row keeps its own positions and mask.

The engine owns its memory, so that repeated calls do not page-fault it in again whatever
the process's allocator settings:
- its big buffers (key/value caches, dependency keys/values) are kept between calls, each
  grown to the largest call seen (`Workspaces`); `release_workspaces()` hands them back;
- on CPU, full passes (encode, prefill, windowed steps, decode) run over at most
  `PASS_ROWS` rows (series x positions) at a time: their activations stay a few MiB, which
  the C allocator keeps and reuses, where activations of a whole batch (tens of MiB each)
  went back to the OS after every layer (glibc's defaults), to be faulted in again. Rows
  do not interact in a pass, and oneDNN computes a row alike whatever the row count: the
  same bits. Without the faults, the smaller passes are also faster (BENCHMARKS.md).
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import numpy as np
import torch

from .decode import DecodePlan
from .features import denormalize, fill_missing, normalize, prepare_uniform, time_features
from .model import Kronos
from .modules import KVCache, fill_rows
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
            raise RuntimeError(f"device {device} requested but CUDA is not available on this machine "
                               f"(torch {torch.__version__}); use --device cpu (or device=\"cpu\"), or install a "
                               "CUDA build of torch on a machine with an NVIDIA GPU")
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

    def __repr__(self) -> str:  # the arrays' full text is rarely what a notebook wants
        close = self.mean[:, 3] if self.mean.ndim == 2 and self.mean.shape[1] > 3 else self.mean.ravel()
        head = ", ".join(f"{c:.6g}" for c in close[:3]) + (", ..." if len(close) > 3 else "")
        return (f"Forecast(steps={len(close)}, close=[{head}], quantiles={sorted(self.quantiles)}"
                + (f", paths={self.paths.shape[0]}" if self.paths is not None else "") + ")")


class Workspaces:
    """Named buffers kept between calls, each grown to the largest request seen.

    `get` returns a contiguous view of the requested shape at the start of the buffer (the
    same layout a fresh `torch.empty` would have), holding whatever an earlier call left
    there: callers write before they read, as with uninitialized memory.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        n = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.numel() < n:
            self._buffers.pop(name, None)
            del buf  # the old buffer goes before the new one comes: no double peak
            buf = self._buffers[name] = torch.empty(n, dtype=dtype, device=self.device)
        return buf[:n].view(shape)

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def release(self) -> None:
        self._buffers.clear()


def _uniform(bars, x_times, y_times) -> bool:
    """Windows [L, 6] of one length L >= 1 with L time stamps each, horizons of one length:
    forecast() prepares them as one array (anything else goes window by window, which also
    says what is wrong with it)."""
    shape = np.shape(bars[0])
    if len(shape) != 2 or shape[1] != 6 or shape[0] < 1:
        return False
    n, p = shape[0], len(y_times[0])
    return (all(np.shape(b) == shape for b in bars) and all(len(t) == n for t in x_times)
            and all(len(t) == p for t in y_times))


@dataclass
class _Generation:
    """What one forecast_arrays call carries from stage to stage. Rows are series until
    `expand`, then series x sample paths (row b * S + j is path j of series b)."""
    B: int  # series
    S: int  # sample paths per series
    P: int  # steps to generate
    L: int  # longest lookback
    lengths: np.ndarray  # [rows] lookback of each row
    uniform: bool  # all lookbacks equal: steps use slices instead of gathers
    cached: bool  # no window slides before the last model step
    sampling: SamplingParams
    generator: torch.Generator | None
    seq1: torch.Tensor  # [rows, L + P] ids: lookback, then generated
    seq2: torch.Tensor
    stamps: torch.Tensor  # [rows, L + P, 5] time features of every position
    len_t: torch.Tensor  # [rows] lengths on the device
    rows: torch.Tensor | None = None  # arange(rows), set by `expand`
    h_last: torch.Tensor | None = None  # [rows, d] hidden state of each row's last position
    dep_k: torch.Tensor | None = None  # [rows, 4, T, d/4] dependency keys/values
    dep_v: torch.Tensor | None = None
    read: int = 0  # dependency (and cache) positions in use
    key_mask: torch.Tensor | None = None  # [rows, 1, 1, read], None when rows agree
    cache: KVCache | None = None  # cached mode: keys/values of every layer and position
    time_emb: torch.Tensor | None = None  # cached mode: [rows, P, d] time embedding per step
    rope: tuple[torch.Tensor, torch.Tensor] | None = None  # cached mode: cos, sin [L + P, head_dim]


class Engine:
    """Forecasts batches of windows with one model and tokenizer on one device.

    The Engine owns the model and tokenizer it is given: it moves them to its device and
    dtype and prepares them in place (fused projections; on CPU with `pack_weights`,
    oneDNN-prepacked weights, see kronos_rt/packing.py). Their state_dicts stay as loaded.
    It also owns its big per-call buffers (`workspaces`), kept for the next call; calls
    on one engine are serialized.
    """

    PASS_ROWS = 512  # rows (series x positions) per full pass on CPU; see the module docstring

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
        self.workspaces = Workspaces(self.device)
        self._lock = threading.Lock()  # one call at a time: calls share the workspaces

    def release_workspaces(self) -> None:
        """Hand back the buffers kept between calls; the next call allocates them again."""
        with self._lock:
            self.workspaces.release()

    def memory_in_use(self) -> tuple[int, int] | None:
        """(allocated, reserved) bytes of the engine's CUDA device; None on other devices."""
        if self.device.type != "cuda":
            return None
        return torch.cuda.memory_allocated(self.device), torch.cuda.memory_reserved(self.device)

    # -- raw bars in, de-normalized forecasts out ---------------------------------------
    def forecast(self, bars, x_times, y_times, pred_len: int, sampling: SamplingParams = SamplingParams(),
                 quantiles=(), return_paths: bool = False) -> list[Forecast]:
        """bars[i]: [L_i, 6] raw (NaN = missing volume/amount); x_times[i]: datetime64 [L_i];
        y_times[i]: datetime64 [pred_len]."""
        if not (len(bars) == len(x_times) == len(y_times)):
            raise ValueError("bars, x_times and y_times must have the same length")
        if len(bars) > 1 and _uniform(bars, x_times, y_times):
            return self._forecast_uniform(bars, x_times, y_times, pred_len, sampling, quantiles, return_paths)
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

    def _forecast_uniform(self, bars, x_times, y_times, pred_len: int, sampling: SamplingParams,
                          quantiles, return_paths: bool) -> list[Forecast]:
        """forecast() for windows of one length (a warm stream's batch): the inputs prepared
        and the outputs de-normalized for the whole batch in a few array calls, with the same
        bits as window by window (tests/kronos_rt/test_engine_uniform.py)."""
        x, mean, std = prepare_uniform(np.stack(bars), self.clip)
        xst = time_features(np.stack([np.asarray(t, dtype="datetime64[m]") for t in x_times]))
        yst = time_features(np.stack([np.asarray(t, dtype="datetime64[m]") for t in y_times]))
        keep_paths = return_paths or bool(quantiles)
        mean_n, paths_n = self.forecast_arrays(x, xst, yst, pred_len, sampling, return_paths=keep_paths)
        means = denormalize(mean_n, mean[:, None, :], std[:, None, :]).astype(np.float64)
        if paths_n is not None:
            all_paths = denormalize(paths_n, mean[:, None, None, :], std[:, None, None, :]).astype(np.float64)
        out = []
        for i in range(len(means)):
            f = Forecast(mean=means[i])
            if paths_n is not None:
                paths = all_paths[i]
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
        with self._lock:
            g, xb = self._start(x, x_stamp, y_stamp, lengths, pred_len, sampling)
            self._prefill(g, xb)
            self._expand(g)
            # Cached steps run flat (kronos_rt/decode.py); the heads too, so that every step
            # of a call takes one path.
            plan = DecodePlan(self.model) if g.cached else None
            for k in range(g.P):
                if k > 0:
                    if g.cached:
                        self._cached_step(g, plan, k)
                    else:
                        self._windowed_step(g, k)
                self._sample_step(g, plan or self.model, k)
            paths = self._detokenize(g)
        return paths.mean(axis=1), (paths if return_paths else None)

    # -- stages ---------------------------------------------------------------------------
    def _start(self, x, x_stamp, y_stamp, lengths: np.ndarray, P: int, sampling: SamplingParams):
        """Inputs staged on the device (right-padded to the longest window) and the empty state."""
        B, L, dev = len(x), int(lengths.max()), self.device
        # Stage inputs on the host (pinned on GPU so the copies are asynchronous).
        xb = np.zeros((B, L, 6), np.float32)
        stamps = np.zeros((B, L + P, 5), np.int64)
        for i in range(B):
            n = lengths[i]
            xb[i, :n] = x[i]
            stamps[i, :n] = x_stamp[i]
            stamps[i, n:n + P] = y_stamp[i]
        xb_t, stamps_t, len_t = (self._to_device(a) for a in (xb, stamps, lengths))
        generator = None
        if sampling.seed is not None and not sampling.greedy:
            generator = torch.Generator(device=dev).manual_seed(int(sampling.seed))
        seq1 = torch.zeros((B, L + P), dtype=torch.long, device=dev)
        g = _Generation(B=B, S=sampling.sample_count, P=P, L=L, lengths=lengths,
                        uniform=bool((lengths == lengths[0]).all()),
                        cached=bool((lengths + P - 1 <= self.max_context).all()),
                        sampling=sampling, generator=generator, seq1=seq1, seq2=torch.zeros_like(seq1),
                        stamps=stamps_t, len_t=len_t)
        return g, xb_t

    def _prefill(self, g: _Generation, xb: torch.Tensor) -> None:
        """Step 0: encode each series, one pass over its window; in cached mode its
        keys/values are written once into each of its S paths' rows."""
        B, S, L, P, dev = g.B, g.S, g.L, g.P, self.device
        s1, s2 = self.encode(xb.to(self.tokenizer_dtype))
        g.seq1[:, :L], g.seq2[:, :L] = s1, s2
        if g.cached:
            g.cache = self._kv_cache(B * S, L + P)
            h = self.forward_hidden(g.seq1[:, :L], g.seq2[:, :L], g.stamps[:, :L], cache=g.cache)
            wlen0 = g.len_t
        else:
            h, wlen0 = self._window_pass(g.seq1, g.seq2, g.stamps, np.maximum(g.lengths - self.max_context, 0),
                                         g.lengths)
        g.h_last = h[torch.arange(B, device=dev), wlen0 - 1]
        dep_k, dep_v = self.model.dep_kv(h)
        g.read = dep_k.shape[2]  # dependency keys in use
        g.key_mask = None if g.uniform else self._key_mask(wlen0, g.read)
        if not g.cached:
            g.dep_k, g.dep_v = dep_k, dep_v
            return
        # Room for the dependency keys/values of every generated position, S rows per series.
        n, e = dep_k.shape[1], dep_k.shape[3]
        g.dep_k, g.dep_v = self.workspaces.get("dep", (2, B * S, n, L + P, e), dep_k.dtype).unbind(0)
        fill_rows(g.dep_k, dep_k)
        fill_rows(g.dep_v, dep_v)
        if not g.uniform:  # a short row's mask reaches positions not yet written
            g.cache.clear_from(L)
            g.dep_k[:, :, L:].zero_()
            g.dep_v[:, :, L:].zero_()
        # Per-call tables, so that a decode step only indexes them.
        future = g.stamps[torch.arange(B, device=dev)[:, None], g.len_t[:, None] + torch.arange(P, device=dev)]
        g.time_emb = self.model.time_emb(future)  # [B, P, d]: step k embeds the time of position len + k - 1
        g.rope = self.model.rope_table(L + P, dev)

    def _expand(self, g: _Generation) -> None:
        """Per-series state repeated for each series' S sample paths (the caches already are)."""
        S = g.S
        if S > 1:
            if not g.cached:
                g.dep_k, g.dep_v = g.dep_k.repeat_interleave(S, dim=0), g.dep_v.repeat_interleave(S, dim=0)
            g.h_last, g.seq1, g.seq2, g.stamps, g.len_t = (
                t.repeat_interleave(S, dim=0) for t in (g.h_last, g.seq1, g.seq2, g.stamps, g.len_t))
            g.time_emb = None if g.time_emb is None else g.time_emb.repeat_interleave(S, dim=0)
            g.key_mask = None if g.key_mask is None else g.key_mask.repeat_interleave(S, dim=0)
        g.lengths = np.repeat(g.lengths, S)
        g.rows = torch.arange(g.B * S, device=self.device)

    def _cached_step(self, g: _Generation, plan: DecodePlan, k: int) -> None:
        """The token generated at step k-1 through the model, one position per row."""
        g.read = g.L + k
        if g.uniform:  # all rows at position L + k - 1: slices, not gathers
            at = g.L + k - 1
            cos, sin, mask = g.rope[0][at], g.rope[1][at], None
            ids1, ids2 = g.seq1[:, at], g.seq2[:, at]
        else:
            pos = g.len_t + (k - 1)  # each row's token generated at step k-1
            at = (g.rows, pos)
            cos, sin = g.rope[0][pos][:, None, None], g.rope[1][pos][:, None, None]
            mask = g.key_mask = self._key_mask(pos + 1, g.read)  # positions 0..pos
            ids1, ids2 = g.seq1[at], g.seq2[at]
        g.h_last = plan.hidden(ids1, ids2, g.time_emb[:, k - 1], g.cache, at, g.read, cos, sin, mask)
        plan.write_dep(g.h_last, g.dep_k, g.dep_v, at)

    def _windowed_step(self, g: _Generation, k: int) -> None:
        """Exact recompute over each row's last max_context positions (the window slid)."""
        starts = np.maximum(g.lengths + k - self.max_context, 0)
        h, wlen = self._window_pass(g.seq1, g.seq2, g.stamps, starts, g.lengths + k)
        g.h_last = h[g.rows, wlen - 1]
        g.dep_k, g.dep_v = self.model.dep_kv(h)
        g.read = g.dep_k.shape[2]
        g.key_mask = None if g.uniform else self._key_mask(wlen, g.read)

    def _sample_step(self, g: _Generation, heads, k: int) -> None:
        """Sample s1, then s2 given s1, at each row's last position; write them as step k."""
        new1 = sample(heads.s1_logits(g.h_last), g.sampling, g.generator)
        logits2 = heads.s2_logits(new1, g.h_last, g.dep_k[:, :, :g.read], g.dep_v[:, :, :g.read], g.key_mask)
        new2 = sample(logits2, g.sampling, g.generator)
        if g.uniform:
            g.seq1[:, g.L + k], g.seq2[:, g.L + k] = new1, new2
        else:
            at = (g.rows, g.len_t + k)
            g.seq1[at], g.seq2[at] = new1, new2

    def _detokenize(self, g: _Generation) -> np.ndarray:
        """Decode each row's last min(n + P, C) tokens; keep the last P: paths [B, S, P, 6].
        Only the positions from the earliest kept one on leave the last decoder block."""
        P = g.P
        total = g.lengths + P
        starts = np.maximum(total - self.max_context, 0)
        idx, wlen = self._window_index(starts, total)
        W = int((total - starts).max())
        first = max(int((total - starts).min()) - P, 0)  # the earliest position any row keeps
        z = self.decode(g.seq1.gather(1, idx), g.seq2.gather(1, idx), keep=W - first)
        take = (wlen - P - first)[:, None] + torch.arange(P, device=self.device)[None, :]
        out = z.gather(1, take[..., None].expand(-1, -1, z.shape[-1])).float()
        return out.reshape(g.B, g.S, P, -1).cpu().numpy()

    # -- full passes, in groups of series on CPU -----------------------------------------
    def _groups(self, n: int, T: int) -> list[tuple[int, int]]:
        """Series ranges [a, b) of at most PASS_ROWS rows of T positions (at least one series).
        One range on GPU, where the caching allocator keeps memory and big passes pay."""
        per = n if self.device.type != "cpu" else max(1, self.PASS_ROWS // max(T, 1))
        return [(a, min(a + per, n)) for a in range(0, n, per)]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokenizer.encode of x [B, T, 6], in groups of series."""
        parts = [self.tokenizer.encode(x[a:b]) for a, b in self._groups(*x.shape[:2])]
        if len(parts) == 1:
            return parts[0]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def decode(self, s1: torch.Tensor, s2: torch.Tensor, keep: int | None = None) -> torch.Tensor:
        """tokenizer.decode of ids [B, T], in groups of series; with `keep`, its last `keep`
        positions only ([B, keep, d_in], the same bits): the last decoder block then computes
        the other positions' keys and values, not their outputs, which nothing reads."""
        if keep is not None and keep >= s1.shape[1]:
            keep = None
        parts = [self._decode_part(s1[a:b], s2[a:b], keep) for a, b in self._groups(*s1.shape)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    @torch.no_grad()
    def _decode_part(self, s1: torch.Tensor, s2: torch.Tensor, keep: int | None) -> torch.Tensor:
        tok = self.tokenizer
        if keep is None:
            return tok.decode(s1, s2)
        # KronosTokenizer.decode with the last block's outputs cut to `keep` positions.
        z = tok.post_quant_embed(tok.ids_to_bits(s1, s2, tok.head.weight.dtype))
        blocks = tok.decoder
        if not len(blocks):
            return tok.head(z[:, z.shape[1] - keep:])
        cos, sin = blocks[0].self_attn.rotary.full_pass(z.shape[1], z.device, z.dtype)
        for block in blocks[:-1]:
            z = block(z, cos, sin)
        return tok.head(blocks[-1](z, cos, sin, keep=keep))

    def forward_hidden(self, s1: torch.Tensor, s2: torch.Tensor, stamps: torch.Tensor,
                       cache: KVCache | None = None) -> torch.Tensor:
        """model.forward_hidden over [B, T] ids, in groups of series; `cache` may hold S rows
        per series (rows b * S .. b * S + S - 1 for series b, see fill_rows)."""
        groups = self._groups(*s1.shape)
        if len(groups) == 1:
            return self.model.forward_hidden(s1, s2, stamps, cache=cache)
        S = 0 if cache is None else cache.k[0].shape[0] // s1.shape[0]
        parts = []
        for a, b in groups:
            part = None if cache is None else cache.rows(a * S, b * S)
            parts.append(self.model.forward_hidden(s1[a:b], s2[a:b], stamps[a:b], cache=part))
        return torch.cat(parts)

    # -- helpers --------------------------------------------------------------------------
    def _kv_cache(self, rows: int, T: int) -> KVCache:
        """Keys/values of every layer for `rows` rows and T positions, in the kept workspace."""
        m = self.model
        H = m.n_heads
        kv = self.workspaces.get("kv", (2, m.n_layers, rows, H, T, m.d_model // H), self.dtype)
        return KVCache(kv[0].unbind(0), kv[1].unbind(0))

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
        h = self.forward_hidden(seq1.gather(1, idx), seq2.gather(1, idx), st)
        return h, wlen

    @staticmethod
    def _key_mask(wlen: torch.Tensor, T: int) -> torch.Tensor:
        return (torch.arange(T, device=wlen.device)[None, :] < wlen[:, None])[:, None, None, :]
