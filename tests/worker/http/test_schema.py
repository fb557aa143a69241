"""The fast request path (orjson + column-wise checks) against the pydantic one: the same
Job for every accepted body, and every body it cannot vouch for left to pydantic."""
from __future__ import annotations

import copy
import json
import types

import numpy as np
import orjson
import pytest

from kronos_rt import SamplingParams
from worker.http.schema import fast_batch, fast_request, request_models
from worker.http.service import ApiError, ForecastService

from tests.worker.http.serving import BASE, bars_of


class _Metrics:
    batch_size = types.SimpleNamespace(observe=lambda n: None)
    queue_depth = types.SimpleNamespace(set_function=lambda f: None)


@pytest.fixture(scope="module")
def service():
    inference = types.SimpleNamespace(sampling=SamplingParams(temperature=1.0, top_k=1, top_p=1.0, sample_count=1))
    return ForecastService(BASE, inference, types.SimpleNamespace(), _Metrics())


def _body(tape_rows, **over) -> dict:
    return {"symbol": "X", "bars": bars_of(tape_rows.iloc[100:140]), "pred_len": 3, **over}


def _edit(body: dict, fn) -> dict:
    body = copy.deepcopy(body)
    fn(body)
    return body


def _same_job(a, b):
    np.testing.assert_array_equal(a.values, b.values)
    assert (a.times == b.times).all() and a.times.dtype == b.times.dtype
    assert (a.horizon, a.as_of, a.pred_len, a.quantiles, a.sampling, a.symbol) == \
           (b.horizon, b.as_of, b.pred_len, b.quantiles, b.sampling, b.symbol)


ACCEPTED = [  # (name, edit): bodies both paths accept
    ("plain", lambda b: None),
    ("volume null, amount missing", lambda b: [(x.update(volume=None), x.pop("amount")) for x in b["bars"]]),
    ("integer prices", lambda b: b["bars"][0].update(open=11, high=12, low=10, close=11)),
    ("other ts forms", lambda b: b["bars"][1].update(ts=b["bars"][1]["ts"].replace("T", " ") + "+08:00")),
    ("sampling and quantiles", lambda b: b.update(sampling={"top_k": 0, "top_p": 0.9}, quantiles=[0.9, 0.1])),
    ("future_ts", lambda b: b.update(future_ts=["2030-01-01T00:00:00", "2030-01-01T00:05:00",
                                                "2030-01-01T00:10:00"])),
]


@pytest.mark.parametrize("name,edit", ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_fast_path_gives_the_job_pydantic_gives(service, tape_rows, name, edit):
    raw = orjson.dumps(_edit(_body(tape_rows), edit))
    ForecastRequest, _ = request_models(True)
    fast = fast_request(raw, True)
    assert fast is not None
    _same_job(service.prepare(fast), service.prepare(ForecastRequest.model_validate_json(raw)))


REFUSED = [  # bodies the fast path leaves to pydantic (which then names the field)
    ("price as string", lambda b: b["bars"][0].update(close="11.2")),
    ("price as bool", lambda b: b["bars"][0].update(close=True)),
    ("negative volume", lambda b: b["bars"][1].update(volume=-1.0)),
    ("missing close", lambda b: b["bars"][7].pop("close")),
    ("unknown bar field", lambda b: b["bars"][0].update(vwap=1.0)),
    ("unknown field", lambda b: b.update(horizon=12)),
    ("ts not a string", lambda b: b["bars"][0].update(ts=1718700000)),
    ("bar not an object", lambda b: b["bars"].append([1, 2, 3])),
    ("huge integer", lambda b: b["bars"][0].update(high=10 ** 400)),
    ("1e999", lambda b: b["bars"][0].update(high=float("inf"))),
    ("bad top_p", lambda b: b.update(sampling={"top_p": 2})),
]


@pytest.mark.parametrize("name,edit", REFUSED, ids=[r[0] for r in REFUSED])
def test_fast_path_leaves_what_it_cannot_vouch_for_to_pydantic(tape_rows, name, edit):
    raw = json.dumps(_edit(_body(tape_rows), edit)).encode()  # json: orjson will not write 10**400
    assert fast_request(raw, True) is None


def test_lenient_mode_ignores_unknown_fields_on_both_paths(service, tape_rows):
    raw = orjson.dumps(_edit(_body(tape_rows, horizon=12), lambda b: b["bars"][0].update(vwap=1.0)))
    ForecastRequest, _ = request_models(False)
    _same_job(service.prepare(fast_request(raw, False)), service.prepare(ForecastRequest.model_validate_json(raw)))
    assert fast_request(b"[1, 2]", True) is None and fast_request(b"{not json", True) is None


def test_batches_take_the_fast_path_only_whole(tape_rows):
    good = _body(tape_rows)
    assert len(fast_batch(orjson.dumps({"series": [good, good]}), True)) == 2
    bad = _edit(good, lambda b: b["bars"][0].update(close="1"))
    assert fast_batch(orjson.dumps({"series": [good, bad]}), True) is None
    assert fast_batch(orjson.dumps({"series": [good], "extra": 1}), True) is None


CROSS_BAR = [  # faults the column-wise check finds and the bar-by-bar pass names
    ("high < low", lambda b: b["bars"][3].update(high=1.0), "bars[3].high"),
    ("duplicate ts", lambda b: b["bars"][5].update(ts=b["bars"][4]["ts"]), "bars[5].ts"),
    ("out of order", lambda b: b["bars"][6].update(ts=b["bars"][2]["ts"]), "bars[6].ts"),
    ("no such day", lambda b: b["bars"][9].update(ts="2024-02-30T09:35:00"), "bars[9].ts"),
    ("year 0", lambda b: b["bars"][0].update(ts="0000-01-01T09:35:00"), "bars[0].ts"),
]


@pytest.mark.parametrize("name,edit,field", CROSS_BAR, ids=[c[0] for c in CROSS_BAR])
def test_cross_bar_faults_name_the_same_field_on_both_paths(service, tape_rows, name, edit, field):
    raw = orjson.dumps(_edit(_body(tape_rows), edit))
    ForecastRequest, _ = request_models(True)
    errors = []
    for req in (fast_request(raw, True), ForecastRequest.model_validate_json(raw)):
        with pytest.raises(ApiError) as err:
            service.prepare(req)
        errors.append((err.value.field, err.value.message))
    assert errors[0] == errors[1] and errors[0][0] == field
