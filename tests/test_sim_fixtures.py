"""The sim engine against AIMET's own QuantSim, on committed aimet-onnx exports (no torch needed).

Every case in tests/fixtures/aimet/ holds an aimet-onnx export (model + encodings in 0.6.1, 1.0.0 and
2.0.0) and what AIMET's ``sim.session`` computed on ``inputs.npy``: the model output and the output of
every enabled quantizer. The sim engine must reproduce all of it bit for bit, from each encodings version.
The float parts run on onnxruntime's CPU kernels, so bits can legitimately move on another onnxruntime
release or CPU ISA; failures name both next to the recorded ones (meta.json).
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from onnx import numpy_helper
from onnx_builders import GraphBuilder, save

from qdiverge.encodings.load import load_encodings
from qdiverge.encodings.schema import EncodingSet, make_encoding
from qdiverge.engines.sim import build_sim_graph, sim_engine
from qdiverge.loading.model import load_model

FIXTURES = Path(__file__).parent / "fixtures" / "aimet"
CASES = sorted(p.parent for p in FIXTURES.glob("*/meta.json"))


def _cases_and_versions() -> list:
    params = []
    for case in CASES:
        meta = json.loads((case / "meta.json").read_text())
        for version, filename in meta["encodings"].items():
            params.append(pytest.param(case, filename, id=f"{case.name}-{version}"))
    return params


def _environment_note(case: Path) -> str:
    meta = json.loads((case / "meta.json").read_text())
    return (
        f"fixture recorded with onnxruntime {meta['onnxruntime']} on {meta['machine']} {meta['cpu_isa']};"
        f" running onnxruntime {onnxruntime.__version__} on {platform.machine()}"
    )


def _load(case: Path, filename: str):
    model, encodings, _ = load_encodings(case / filename, load_model(case / "model.onnx"))
    return model, encodings


def test_fixtures_are_present():
    assert len(CASES) >= 4, f"expected the AIMET fixtures under {FIXTURES}"


@pytest.mark.parametrize(("case", "filename"), _cases_and_versions())
def test_loader_finds_exactly_aimets_quantizers(case, filename):
    _, encodings = _load(case, filename)
    quantized = set(np.load(case / "sim_tensors.npz").files)
    assert set(encodings.activations) | set(encodings.params) == quantized


@pytest.mark.parametrize(("case", "filename"), _cases_and_versions())
def test_sim_engine_matches_aimet_bit_for_bit(case, filename):
    model, encodings = _load(case, filename)
    engine = sim_engine(model, encodings)
    inputs = np.load(case / "inputs.npy")
    expected_out = np.load(case / "sim_output.npy")
    expected = np.load(case / "sim_tensors.npz")
    activations = [n for n in expected.files if n in encodings.activations]
    runs = [engine.run({"input": inputs[i : i + 1]}, capture=activations) for i in range(len(inputs))]
    note = _environment_note(case)

    output = np.stack([r[model.outputs[0]] for r in runs])
    assert output.dtype == np.float32 and output.shape == expected_out.shape
    assert np.array_equal(output, expected_out), f"model output differs from AIMET's sim ({note})"
    for name in activations:
        got = np.stack([r[name] for r in runs])
        assert got.shape == expected[name].shape, name
        differ = int(np.count_nonzero(got != expected[name]))
        assert differ == 0, f"{name}: {differ} of {got.size} values differ from AIMET's sim ({note})"


@pytest.mark.parametrize(("case", "filename"), _cases_and_versions())
def test_sim_weights_match_aimet_bit_for_bit(case, filename):
    model, encodings = _load(case, filename)
    graph = build_sim_graph(model, encodings)
    weights = {t.name: numpy_helper.to_array(t) for t in graph.proto.graph.initializer}
    expected = np.load(case / "sim_tensors.npz")
    params = [n for n in expected.files if n in encodings.params]
    assert params
    for name in params:
        assert np.array_equal(weights[name], expected[name]), name


def _frontiers(model):
    """For each node, the tensors computed up to it that later nodes still read (a complete graph cut)."""
    available = set(model.inputs)
    for k, node in enumerate(model.nodes[:-1]):
        available.update(o for o in node.outputs if o)
        later = {i for n in model.nodes[k + 1 :] for i in n.inputs}
        yield sorted(available & later)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_suffix_runs_reproduce_the_full_run(case):
    """What bisect relies on: resuming the sim from any complete cut gives the full run's bits."""
    model, encodings = _load(case, "model.encodings")
    engine = sim_engine(model, encodings)
    feeds = {"input": np.load(case / "inputs.npy")[:1]}
    for cut in _frontiers(model):
        full = engine.run(feeds, capture=cut)
        resumed = engine.run_suffix({n: full[n] for n in cut})
        for name in model.outputs:
            assert np.array_equal(resumed[name], full[name]), f"cut {cut}"


def test_suffix_cut_through_an_int64_shape_tensor(tmp_path):
    g = GraphBuilder()
    x = g.act("Relu", g.input("input", (1, 4, 2, 2)), "relu")
    shape = g.op("Shape", [x], "shape_out")
    g.output(g.op("Reshape", [g.act("Tanh", x, "tanh"), shape], "reshape_out"))
    model = load_model(save(g.build(), tmp_path))
    relu = make_encoding("relu_out", 8, 4.0 / 255, 0.0)
    engine = sim_engine(model, EncodingSet("test", "1.0.0", activations={"relu_out": relu}))
    feeds = {"input": np.random.default_rng(0).standard_normal((1, 4, 2, 2)).astype(np.float32)}
    full = engine.run(feeds, capture=["relu_out", "shape_out"])
    assert full["shape_out"].dtype == np.int64
    resumed = engine.run_suffix({"relu_out": full["relu_out"], "shape_out": full["shape_out"]})
    assert np.array_equal(resumed["reshape_out"], full["reshape_out"])
