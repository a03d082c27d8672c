"""``--target qnn-htp``: the real HTP backend as the DSP side, and the emulator measured against it.

The thresholds are the agreement measured by scripts/compare_htp_emulator.py (docs/htp_arithmetic.md,
"Emulator vs HTP"), rounded down a little, so a regression in the emulator or the HTP plumbing fails.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qdiverge.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mobilenetv3"
ARGS = [
    str(EXAMPLE / "model.onnx"),
    str(EXAMPLE / "model.encodings"),
    "--config",
    str(EXAMPLE / "quantsim_config.json"),
]

# op -> minimum fraction of layerwise output codes identical to HTP (measured: see module docstring)
LAYERWISE_MIN = {
    "Conv+Relu": 0.997,
    "Conv+HardSwish": 0.99,
    "Conv": 0.996,
    "Mul": 0.998,
    "Add": 0.995,
    "GlobalAveragePool": 1.0,
    "HardSwish": 1.0,
    "HardSigmoid": 1.0,
    "Flatten": 1.0,
    "Gemm": 1.0,
}
# end to end (errors accumulate through the network): the lowest measured among the ops checked is 55.8%
END_TO_END_MIN = 0.53


def test_missing_onnxruntime_qnn_names_the_extra(monkeypatch):
    from qdiverge.engines import qnn_htp

    real = importlib.import_module

    def fake(name, *args):
        if name == "onnxruntime_qnn":
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(qnn_htp.importlib, "import_module", fake)
    with pytest.raises(InputError, match=r"pip install 'qdiverge\[qnn\]'"):
        qnn_htp.load_qnn()


@pytest.fixture(scope="module")
def measured():
    pytest.importorskip("onnxruntime_qnn")
    sys.path.insert(0, str(ROOT / "scripts"))
    import compare_htp_emulator as script

    ws, source, emu, htp = script.workspace(73, 1)
    layer, whole = script.measure(ws, source, emu, htp)
    return ws, source, emu, htp, layer, whole


@pytest.mark.htp
def test_exposing_intermediates_leaves_outputs_unchanged(measured):
    from qdiverge.engines.qnn_htp import make_htp_session

    ws, source, _, htp, _, _ = measured
    assert htp.hidden == [] and htp.exposed == htp.candidates
    assert len(htp.exposed) == len(htp.steps) + 1  # every step output plus the graph input
    plain = make_htp_session(htp.proto)  # the unmodified QDQ model: outputs only
    for sample in source:
        want = dict(zip([o.name for o in plain.get_outputs()], plain.run(None, sample), strict=True))
        got = htp.run(sample, keep="all")
        for o in ws.model.outputs:
            # compared as codes: HTP's own dequantization of the output can be 1 ulp off DequantizeLinear's
            tap = htp.taps[o]
            want_codes = np.rint(want[o] / tap.scale.astype(np.float32)) + tap.zero_point
            np.testing.assert_array_equal(got[o].codes, want_codes)


@pytest.mark.htp
def test_emulator_agrees_with_htp_as_measured(measured):
    *_, layer, whole = measured
    assert set(layer) == set(LAYERWISE_MIN)
    for op, minimum in LAYERWISE_MIN.items():
        emu = layer[op]["emulate"]
        assert emu.match >= minimum, (op, emu.match)
        assert emu.max_diff <= 1, op
    # the emulator models HTP's Conv->HardSwish fusion (conv encoding skipped); the sim cannot
    fused = layer["Conv+HardSwish"]
    assert fused["emulate"].match > fused["sim"].match + 0.04
    for op in ("Conv+Relu", "Conv+HardSwish", "Conv", "Mul", "Add", "GlobalAveragePool"):
        assert whole[op]["emulate"].match >= whole[op]["sim"].match - 0.001, op
        # end to end, +-1 LSB misses cascade through the trained example
        assert whole[op]["emulate"].match > END_TO_END_MIN, op


@pytest.mark.htp
def test_htp_dumps_through_compare_give_bisect_numbers(measured, tmp_path):
    from test_compare import MODES, write_dumps

    from qdiverge.driver.bisect import Bisector
    from qdiverge.driver.compare import DeviceSide

    ws, source, emu, htp, _, _ = measured
    outputs = list(ws.model.outputs)
    encs = {o: emu.target_encodings.get(o) for o in outputs}
    reference = Bisector(ws.sim(), htp, ws.float(), outputs, encs).run(source, MODES)
    write_dumps(tmp_path, [htp.run(sample, keep="all") for sample in source], sanitize=True)
    device = DeviceSide(tmp_path, emu)
    got = Bisector(ws.sim(), device, ws.float(), outputs, encs).run(source, MODES)
    assert device.summary.missing == []
    for mine, ref in zip(got.steps, reference.steps, strict=True):
        assert mine.cumulative == ref.cumulative, mine.tensor
        assert mine.split_final == ref.split_final, mine.tensor


@pytest.mark.htp
def test_cli_bisect_and_run_on_htp(measured, tmp_path):
    from qdiverge.cli import cli

    runner = CliRunner()
    report = tmp_path / "r.json"
    args = [*ARGS, "--target", "qnn-htp", "--samples", "1", "--inputs", str(EXAMPLE / "inputs.npy")]
    modes = ["--mode", "layerwise,cumulative"]
    res = runner.invoke(cli, ["bisect", *args, *modes, "--format", "json", "-o", report])
    assert res.exit_code == 0, res.output
    data = json.loads(report.read_text())
    assert any("qnn-htp:v73" in e for e in data["run"]["engines"])
    res = runner.invoke(cli, ["run", *args, "--engine", "htp", "--dump-all", "-o", tmp_path / "o.npz"])
    assert res.exit_code == 0, res.output
    with np.load(tmp_path / "o.npz") as npz:
        assert set(measured[0].model.outputs) <= set(npz.files)


@pytest.mark.htp
def test_qnn_htp_json_report_on_stdout_is_clean_json():
    """libQnnHtp prints a banner on file descriptor 1; a JSON report on stdout must still parse."""
    import json
    import subprocess
    import sys

    example = Path(__file__).resolve().parents[1] / "examples" / "mobilenetv3"
    args = [sys.executable, "-m", "qdiverge", "-q", "bisect", example / "model.onnx", example / "model.encodings",
            "--config", example / "quantsim_config.json", "--inputs", example / "inputs.npy", "--samples", "1",
            "--target", "qnn-htp", "--mode", "cumulative", "--format", "json"]  # fmt: skip
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["run"]["target"] == "qnn-htp"
