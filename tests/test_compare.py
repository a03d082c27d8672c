"""``qdiverge compare``: device dumps (qnn-net-run / snpe-net-run layout) as the DSP side of the bisection.

The oracle is bisect itself: the emulator's own tensors written as a "device" dump must give exactly the
emulator-vs-sim numbers of bisect's cumulative and split modes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qdiverge.driver.bisect import Bisector
from qdiverge.driver.compare import DeviceSide
from qdiverge.errors import InputError
from qdiverge.loading.device_dumps import match_names, qnn_sanitize
from qdiverge.loading.inputs import input_source
from qdiverge.pipeline import open_workspace

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mobilenetv3"
MODES = ("cumulative", "split")


def write_dumps(root: Path, runs: list[dict], sanitize: bool = False, native: bool = False) -> None:
    """Write ``runs`` (one {tensor: QTensor} per sample) as ``Result_N/<name>.raw`` (qnn-net-run --debug)."""
    for k, values in enumerate(runs):
        result = root / f"Result_{k}"
        for name, q in values.items():
            path = result / f"{qnn_sanitize(name) if sanitize else name.lstrip('/')}.raw"
            path.parent.mkdir(parents=True, exist_ok=True)
            if native and q.encoding is not None:
                dtype = np.int8 if q.encoding.signed else np.uint8
                path.write_bytes(q.codes.astype(dtype).tobytes())
            else:
                path.write_bytes(q.dequantize().astype(np.float32).tobytes())


@pytest.fixture(scope="module")
def example():
    ws = open_workspace(EXAMPLE / "model.onnx", EXAMPLE / "model.encodings", EXAMPLE / "quantsim_config.json")
    source = input_source(ws.model, EXAMPLE / "inputs.npy", 1, 0, ws.encodings)
    emu = ws.emulator(source)
    outputs = list(ws.model.outputs)
    encs = {o: emu.target_encodings.get(o) for o in outputs}
    reference = Bisector(ws.sim(), emu, ws.float(), outputs, encs).run(source, MODES)
    runs = [emu.run(sample, keep="all") for sample in source]
    return ws, source, emu, reference, runs


def _compare(ws, source, emu, root: Path):
    device = DeviceSide(root, emu)
    outputs = list(ws.model.outputs)
    encs = {o: device.target_encodings.get(o) for o in outputs}
    return device, Bisector(ws.sim(), device, ws.float(), outputs, encs).run(source, MODES)


def test_qnn_name_sanitizing_follows_the_converter_rule():
    # rule from QNN's converter (ir_to_qnn.sanitize_name): runs of \W -> "_", "_" prefix unless alphabetic
    assert qnn_sanitize("/stem/stem.0/Conv_output_0") == "__stem_stem_0_Conv_output_0"
    assert qnn_sanitize("onnx::Conv_341") == "onnx_Conv_341"
    assert qnn_sanitize("123") == "_123"
    assert qnn_sanitize("input") == "input"
    names = match_names(["input", "_0_b", "nothing", "x_y"], ["input", "0.b", "x.y", "x/y"])
    assert names.tensors == {"input": "input", "_0_b": "0.b"}
    assert names.unmatched == ["nothing"]
    assert names.ambiguous == ["x_y"]


@pytest.mark.parametrize("sanitize,native", [(True, False), (False, True)])
def test_emulator_dump_gives_bisect_numbers(example, tmp_path, sanitize, native):
    ws, source, emu, reference, runs = example
    write_dumps(tmp_path, runs, sanitize=sanitize, native=native)
    device, got = _compare(ws, source, emu, tmp_path)
    assert device.summary.missing == [] and device.summary.unmatched == []
    assert got.final_emu_vs_sim == reference.final_emu_vs_sim
    for mine, ref in zip(got.steps, reference.steps, strict=True):
        assert mine.tensor == ref.tensor
        assert mine.cumulative == ref.cumulative, mine.tensor
        assert mine.split_final == ref.split_final, mine.tensor


def test_missing_tensor_is_reported_and_its_cut_skipped(example, tmp_path):
    ws, source, emu, reference, runs = example
    # a tensor live across exactly one cut: its producer's cut cannot be fed from the device
    gone = next(s.outputs[0] for s in emu.steps[3:] if len(emu.model.consumers.get(s.outputs[0], [])) == 1)
    write_dumps(tmp_path, [{k: v for k, v in run.items() if k != gone} for run in runs])
    device, got = _compare(ws, source, emu, tmp_path)
    assert device.summary.missing == [gone]
    assert not device.available(gone)
    for mine, ref in zip(got.steps, reference.steps, strict=True):
        if mine.tensor == gone:
            assert mine.cumulative is None and mine.split_final is None
        else:
            assert mine.cumulative == ref.cumulative
    assert got.steps[-1].split_final == reference.steps[-1].split_final


def test_missing_final_output_is_an_error(example, tmp_path):
    ws, _, emu, _, runs = example
    write_dumps(tmp_path, [{k: v for k, v in run.items() if k not in ws.model.outputs} for run in runs])
    with pytest.raises(InputError, match="no dump of model output"):
        DeviceSide(tmp_path, emu)
    with pytest.raises(InputError, match="no Result_N"):
        DeviceSide(tmp_path / "Result_0", emu)
