"""Live check against aimet-onnx: re-create fixtures with scripts/make_aimet_fixtures.py and compare.

Unlike test_sim_fixtures.py this runs AIMET's QuantizationSimModel in the same process, on fresh random
inputs wider than the calibration data, so it holds on any onnxruntime build or CPU. Needs torch and
aimet-onnx (``pip install .[aimet]``); skipped cleanly without them.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.aimet

pytest.importorskip("torch")
pytest.importorskip("aimet_onnx")

from qdiverge.encodings.load import load_encodings  # noqa: E402
from qdiverge.engines.sim import sim_engine  # noqa: E402
from qdiverge.loading.model import load_model  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_aimet_fixtures.py"


@pytest.fixture(scope="module")
def fx():
    spec = importlib.util.spec_from_file_location("make_aimet_fixtures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("case_name", ["mbv3_pt_user", "mix_pc_asym", "wide_pt_sym"])
def test_sim_engine_equals_live_aimet_quantsim(fx, tmp_path, case_name):
    case = fx.CASES_BY_NAME[case_name]
    sim = fx.quantize_case(case, tmp_path, seed=7)
    inputs = fx.sample_data(case.input_shape, 6, seed=12345, spread=2.0)
    expected_out = fx.sim_outputs(sim, inputs)
    expected = fx.sim_tensors(sim, inputs)

    for version in fx.VERSIONS:
        path = tmp_path / fx.encodings_filename(version)
        model, encodings, _ = load_encodings(path, load_model(tmp_path / "model.onnx"))
        assert set(encodings.activations) | set(encodings.params) == set(expected), version
        engine = sim_engine(model, encodings)
        activations = [n for n in expected if n in encodings.activations]
        runs = [engine.run({"input": inputs[i : i + 1]}, capture=activations) for i in range(len(inputs))]
        output = np.stack([r[model.outputs[0]] for r in runs])
        assert np.array_equal(output, expected_out), f"{version}: model output differs"
        for name in activations:
            got = np.stack([r[name] for r in runs])
            assert got.shape == expected[name].shape, f"{version}: {name}"
            assert np.array_equal(got, expected[name]), f"{version}: {name}"
