"""`kronos-rt serve --model NAME@latest` follows the registry as the worker does: a promoted
version is switched to between two batches and named in every answer it makes."""
from __future__ import annotations

import asyncio
import dataclasses

import httpx
import numpy as np
import torch

from kronos_rt import Kronos
from kronos_rt.registry import Registry
from worker.http.server import Standalone
from worker.pipeline.inference import build_engine

from tests.kronos_rt.conftest import PARITY
from tests.worker.http.serving import BASE, bars_of, values


async def test_serve_follows_latest_promotions(tmp_path, tape_rows):
    reg = Registry(tmp_path / "registry")
    reg.import_dirs("par", PARITY / "model", PARITY / "tokenizer", version="1.0.0")
    m = Kronos.from_pretrained(PARITY / "model")
    with torch.no_grad():
        m.head.proj_s1.weight.mul_(-1.0)  # same shapes, visibly different forecasts
    m.save_pretrained(tmp_path / "m2")
    reg.import_dirs("par", tmp_path / "m2", PARITY / "tokenizer", version="1.1.0", promote=False)
    s = dataclasses.replace(BASE, model="par@latest", tokenizer="auto", registry=str(reg.root), model_poll_s=0.1)
    engine, ref = build_engine(s)
    body = {"symbol": "X", "bars": bars_of(tape_rows.iloc[300:340]), "pred_len": 3}
    async with Standalone(s, engine, ref) as api:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api.port}", timeout=30) as http:
            before = (await http.post("/v1/forecast", json=body)).json()
            reg.promote("par", "1.1.0")
            for _ in range(300):
                if (await http.get("/v1/models")).json()["model"]["version"] == "1.1.0":
                    break
                await asyncio.sleep(0.05)
            after = (await http.post("/v1/forecast", json=body)).json()
            api.reload()  # SIGHUP's path: a forced re-check of an unchanged latest changes nothing
            await asyncio.sleep(0.3)
            again = (await http.post("/v1/forecast", json=body)).json()
    assert (before["model"]["version"], after["model"]["version"], again["model"]["version"]) == \
           ("1.0.0", "1.1.0", "1.1.0")
    assert not np.array_equal(values(before), values(after))
    np.testing.assert_array_equal(values(after), values(again))
