"""Running several samples per engine call must change nothing but speed."""

from __future__ import annotations

import json

import numpy as np
from fault_models import fault_case, run_cli
from onnx_builders import save, small_net

from qdiverge.loading.inputs import input_source
from qdiverge.loading.model import load_model
from qdiverge.pipeline import open_workspace


def _bisect(case, *extra: str, samples: int = 8) -> dict:
    code, out, err = run_cli(
        "-q", "bisect", *case.args(), "--samples", str(samples), "--format", "json", *extra
    )
    assert code == 0, err
    return json.loads(out)


def test_batched_bisect_equals_one_sample_at_a_time(tmp_path, monkeypatch):
    case = fault_case(tmp_path, "strided")
    batched = _bisect(case)
    ws = open_workspace(case.model, case.encodings, case.config)
    assert ws.batched(input_source(ws.model, None, 8, 0, ws.encodings)).batch == 8
    monkeypatch.setattr("qdiverge.pipeline.MAX_BATCH", 1)
    single = _bisect(case)
    assert batched["layers"] == single["layers"]
    assert batched["summary"] == single["summary"]


def test_a_graph_that_hard_codes_the_batch_runs_per_sample(tmp_path):
    # small_net reshapes to the constant (1, 256): eight stacked samples cannot pass through it
    path = save(small_net(), tmp_path)
    common = {"bw": 8, "dtype": "INT", "enc_type": "PER_TENSOR", "offset": [-128]}
    act = {**common, "is_sym": False, "scale": [0.02]}
    wgt = {**common, "is_sym": True, "scale": [0.005]}
    data = {
        "version": "1.0.0",
        "activation_encodings": [{"name": n, **act} for n in ("input", "relu1_out", "add_out")],
        "param_encodings": [{"name": n, **wgt} for n in ("conv1.weight", "fc.weight")],
    }
    enc = tmp_path / "model.encodings"
    enc.write_text(json.dumps(data))
    ws = open_workspace(path, enc)
    source = input_source(ws.model, None, 8, 0, ws.encodings)
    assert ws.batched(source) is ws


def test_batches_stack_samples_in_order(tmp_path):
    path = save(small_net(), tmp_path)
    data = np.random.default_rng(0).standard_normal((5, 1, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", data)
    source = input_source(load_model(path), tmp_path / "x.npy", 0, 0)
    batches = list(source.batches(2))
    assert [(b["input"].shape[0], real) for b, real in batches] == [(2, 2), (2, 2), (2, 1)]
    stacked = np.concatenate([b["input"][:real] for b, real in batches])
    assert np.array_equal(stacked, data.reshape(5, 3, 8, 8))
    assert np.array_equal(batches[-1][0]["input"][1], data[4, 0])  # the padding repeats the last sample


def test_a_padded_last_batch_is_never_measured(tmp_path, monkeypatch):
    """5 samples in batches of 2 (the last one padded) give exactly the per-sample results."""
    case = fault_case(tmp_path, "saturate")
    monkeypatch.setattr("qdiverge.pipeline.MAX_BATCH", 2)
    padded = _bisect(case, "--labels", _labels(tmp_path, 5), samples=5)
    monkeypatch.setattr("qdiverge.pipeline.MAX_BATCH", 1)
    single = _bisect(case, "--labels", _labels(tmp_path, 5), samples=5)
    for key in ("layers", "summary", "accuracy", "stability"):
        assert padded[key] == single[key], key


def _labels(tmp_path, n: int) -> str:
    path = tmp_path / "labels.txt"
    path.write_text("\n".join(str(i % 10) for i in range(n)))
    return str(path)
