"""kronos-rt inference library: Kronos model, tokenizer, engine and drop-in predictor.

Knows nothing of Kafka or Redis; the streaming service in `worker/` builds on it.
"""
from .checkpoint import CheckpointError
from .engine import Engine, Forecast
from .loading import load_engine
from .model import Kronos
from .predictor import KronosPredictor, PathForecast
from .sampling import SamplingParams
from .tokenizer import KronosTokenizer

__all__ = ["CheckpointError", "Engine", "Forecast", "Kronos", "KronosPredictor", "KronosTokenizer",
           "PathForecast", "SamplingParams", "load_engine"]
__version__ = "0.1.0"
