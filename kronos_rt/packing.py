"""Engine-time weight layouts: fused projections and prepacked CPU weights (oneDNN).

Two things make the few-row matrix products of a decode step cheaper without touching the
checkpoint layout:

- Fusion: q/k/v of an attention layer, and w1/w3 of a feed-forward layer, read the same
  input, so one [3d, d] (or [2ff, d]) product replaces three (two) smaller ones.
- Packing (CPU): PyTorch's fp32 `F.linear` calls MKL's sgemm, which repacks the weight on
  every call; at the eight rows of a decode step that is most of the cost. oneDNN packs a
  weight once, and its kernel is then about 2x faster at 8 rows and about 1.5x at a
  2 000-row prefill (BENCHMARKS.md). It also computes each output row the same way
  whatever the number of rows, so a one-token decode step's products equal a full
  recompute's bit for bit; a fused product equals its parts bit for bit too.

`prepare(module)` applies both to every Attention / FeedForward / Linear under a module.
The fused and packed copies are extra tensors beside the parameters, never parameters
themselves: state_dict keys and values stay those of the checkpoint. A prepared layer
whose source weights were moved, cast or overwritten since falls back to the plain path.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .modules import Attention, FeedForward

_PACKABLE = (torch.float32, torch.bfloat16)
CHUNK_ROWS = 512


def row_bucket(m: int) -> int:
    """Rows a packed product of m rows (1..CHUNK_ROWS) runs at: a power of two up to 64,
    then a multiple of 64."""
    return 1 << (m - 1).bit_length() if m <= 64 else -(-m // 64) * 64


_BUCKETS = frozenset(row_bucket(m) for m in range(1, CHUNK_ROWS + 1))


def packing_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this PyTorch build can prepack CPU linear weights of `dtype` with oneDNN."""
    if dtype not in _PACKABLE or not torch.backends.mkldnn.is_available():
        return False
    ops = torch.ops.mkldnn
    if not (hasattr(ops, "_reorder_linear_weight") and hasattr(ops, "_linear_pointwise")):
        return False
    return dtype != torch.bfloat16 or bool(ops._is_mkldnn_bf16_supported())


class FusedLinear:
    """One product for several `nn.Linear`s that read the same input; returns their outputs
    (a tuple, or the tensor itself for one linear).

    A plain object, not a module, holding no parameters: attached to the module that owns
    the linears, it leaves that module's state_dict and module tree unchanged. It checks
    on every call (cheaply) that the linears' weights are still the ones it was made from
    and computes the plain way if not: prepare again after changing weights.
    """

    def __init__(self, linears: list[nn.Linear], pack: bool):
        self._linears = list(linears)
        self.sizes = [lin.out_features for lin in linears]
        self.in_features = linears[0].in_features
        w = torch.cat([lin.weight.detach() for lin in linears]) if len(linears) > 1 else linears[0].weight.detach()
        if all(lin.bias is None for lin in linears):
            b = None
        else:
            b = torch.cat([lin.bias.detach() if lin.bias is not None else w.new_zeros(n)
                           for lin, n in zip(linears, self.sizes)])
        self.packed = pack and w.device.type == "cpu" and packing_available(w.dtype)
        self._weight = torch.ops.mkldnn._reorder_linear_weight(w, None) if self.packed else w
        # The overload itself: calling the packet resolves it anew on every call (~8 us).
        self._linear = torch.ops.mkldnn._linear_pointwise.default if self.packed else None
        self._bias = b
        self._dtype, self._device = w.dtype, w.device
        self._made_from = self._state()

    def __getstate__(self):
        # oneDNN tensors cannot be copied or pickled: a copy (deepcopy, torch.save) computes
        # the plain way until prepared again.
        return {**self.__dict__, "_weight": None, "_bias": None, "_made_from": None, "_linear": None}

    def _state(self) -> list:
        # A moved, cast or overwritten weight has another data_ptr or version (inference
        # tensors, e.g. weights copied under inference_mode, keep no version). Read through
        # _parameters: nn.Module.__getattr__ costs a microsecond per call, on every product.
        state = []
        for lin in self._linears:
            w = lin._parameters["weight"]
            state.append((w.data_ptr(), -1 if w.is_inference() else w._version))
        return state

    def product(self, x: torch.Tensor) -> torch.Tensor:
        """The concatenated outputs [..., sum(sizes)]."""
        if x.dtype != self._dtype or x.device != self._device or self._state() != self._made_from:
            return torch.cat([F.linear(x, lin.weight, lin.bias) for lin in self._linears], -1)
        if not self.packed:
            return F.linear(x, self._weight, self._bias)
        if x.numel() // self.in_features in _BUCKETS:  # the common case: one call as it is
            return self._linear(x, self._weight, self._bias, "none", [], "")
        return self._bucketed(x)

    def _bucketed(self, x: torch.Tensor) -> torch.Tensor:
        # oneDNN builds (and keeps, up to 1 024 of them) a primitive of up to a few MiB for
        # each input row count, and a service meets many (batch x window length). Rows go
        # through in chunks of CHUNK_ROWS, each zero-padded up to a bucket, so a weight meets
        # at most len(_BUCKETS) row counts. Rows do not interact: padding changes no result.
        x2 = x.reshape(-1, x.shape[-1])
        outs = []
        for i in range(0, x2.shape[0], CHUNK_ROWS):
            part = x2[i:i + CHUNK_ROWS]
            m = part.shape[0]
            padded = row_bucket(m)
            if padded != m:
                part = torch.cat([part, part.new_zeros(padded - m, part.shape[1])])
            outs.append(self._linear(part, self._weight, self._bias, "none", [], "")[:m])
        y = outs[0] if len(outs) == 1 else torch.cat(outs)
        return y.view(*x.shape[:-1], y.shape[-1])

    def __call__(self, x: torch.Tensor):
        y = self.product(x)
        return y if len(self.sizes) == 1 else y.split(self.sizes, -1)


def bound_product(layer) -> Callable[[torch.Tensor], torch.Tensor]:
    """The cheapest callable computing `layer` (an nn.Linear, PackedLinear or FusedLinear;
    a FusedLinear's outputs concatenated) on [rows, in] inputs with the weights as they are
    now, for a loop that calls it many times: the per-call checks of `product` are done
    here once (a decode step costs mostly such fixed costs: kronos_rt/decode.py)."""
    fused = layer if isinstance(layer, FusedLinear) else getattr(layer, "_prepared", None)
    if fused is None:  # a plain nn.Linear
        weight, bias = layer.weight, layer.bias
        return lambda x: F.linear(x, weight, bias)
    if not fused.packed or fused._state() != fused._made_from:
        return fused.product  # (stale: product itself computes the plain way)
    op, weight, bias = fused._linear, fused._weight, fused._bias

    def packed(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] in _BUCKETS:
            return op(x, weight, bias, "none", [], "")
        return fused.product(x)
    return packed


class PackedLinear(nn.Linear):
    """An `nn.Linear` (the same Parameters, so the same state_dict) computed prepacked."""

    def __init__(self, linear: nn.Linear):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self._prepared = FusedLinear([self], pack=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._prepared.product(x)

    def plain(self) -> nn.Linear:
        """A plain `nn.Linear` with the same Parameters."""
        lin = nn.Linear(0, 0, bias=False)
        lin.in_features, lin.out_features = self.in_features, self.out_features
        lin.weight, lin.bias = self.weight, self.bias
        return lin


def prepare(module: nn.Module, pack: bool = True) -> int:
    """Fuse the projections of every Attention / FeedForward under `module` and, with `pack`
    (CPU, fp32 or bf16), prepack every linear weight. Returns the number of products made."""
    count = 0
    # Linears first, so that the fused products below refer to the layers in the tree.
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if pack and isinstance(child, nn.Linear) and child.weight.device.type == "cpu" \
                    and packing_available(child.weight.dtype):  # (a PackedLinear is packed anew)
                setattr(parent, name, PackedLinear(child))
                count += 1
            elif not pack and isinstance(child, PackedLinear):  # prepared before with packing
                setattr(parent, name, child.plain())
    for m in module.modules():
        if isinstance(m, Attention):  # only the product its role uses (a packed copy each)
            if m.cross:
                m.kv = FusedLinear([m.k_proj, m.v_proj], pack)
            else:
                m.qkv = FusedLinear([m.q_proj, m.k_proj, m.v_proj], pack)
            count += 1
        elif isinstance(m, FeedForward):
            m.w13 = FusedLinear([m.w1, m.w3], pack)
            count += 1
    return count
