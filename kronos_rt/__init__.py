"""kronos-rt inference library: Kronos model, tokenizer, engine and drop-in predictor.

Knows nothing of Kafka or Redis; the streaming service in `worker/` builds on it.
The names below are imported on first use, so `import kronos_rt.features` (numpy only)
does not pay for importing torch.
"""
import importlib

_EXPORTS = {
    "CheckpointError": ".checkpoint",
    "Engine": ".engine",
    "Forecast": ".engine",
    "load_engine": ".loading",
    "Kronos": ".model",
    "KronosPredictor": ".predictor",
    "PathForecast": ".predictor",
    "SamplingParams": ".sampling",
    "KronosTokenizer": ".tokenizer",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'kronos_rt' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
