"""``bisect --labels``: top-1 accuracy of float, sim and DSP side against ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fault_models import run_cli

from qdiverge.errors import InputError
from qdiverge.loading.inputs import input_source, load_labels
from qdiverge.pipeline import open_workspace

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mobilenetv3"
FILES = (EXAMPLE / "model.onnx", EXAMPLE / "model.encodings", "--config", EXAMPLE / "quantsim_config.json")


def test_accuracy_equals_argmax_of_each_engine_against_the_labels():
    code, out, err = run_cli(
        "-q", "bisect", *FILES, "--inputs", EXAMPLE / "inputs.npy", "--samples", "8",
        "--labels", EXAMPLE / "labels.npy", "--mode", "cumulative", "--format", "json",
    )  # fmt: skip
    assert code == 0, err
    accuracy = json.loads(out)["accuracy"]
    ws = open_workspace(FILES[0], FILES[1], FILES[3])
    source = input_source(ws.model, EXAMPLE / "inputs.npy", 8, 0, ws.encodings)
    labels = np.load(EXAMPLE / "labels.npy")[:8]
    emulator = ws.emulator(source)
    hits = {"float": 0, "sim": 0, "dsp": 0}
    for i, sample in enumerate(source):
        out_name = ws.model.outputs[0]
        hits["float"] += int(ws.float().run(sample)[out_name].argmax() == labels[i])
        hits["sim"] += int(ws.sim().run(sample)[out_name].argmax() == labels[i])
        hits["dsp"] += int(emulator.run(sample)[out_name].dequantize().argmax() == labels[i])
    assert accuracy == {k: v / 8 for k, v in hits.items()}


def test_labels_from_text_and_bad_label_files(tmp_path):
    (tmp_path / "labels.txt").write_text("3\n1\n4\n")
    assert load_labels(tmp_path / "labels.txt", 2).tolist() == [3, 1]
    with pytest.raises(InputError, match="2 label"):
        np.save(tmp_path / "short.npy", np.array([1, 2]))
        load_labels(tmp_path / "short.npy", 3)
    with pytest.raises(InputError, match="integer class indices"):
        np.save(tmp_path / "float.npy", np.array([0.5, 1.0]))
        load_labels(tmp_path / "float.npy", 2)
    with pytest.raises(InputError, match="one integer class index per line"):
        (tmp_path / "words.txt").write_text("cat\ndog\n")
        load_labels(tmp_path / "words.txt", 2)
    with pytest.raises(InputError, match="one class index per sample"):
        np.save(tmp_path / "onehot.npy", np.eye(3, dtype=np.int64))
        load_labels(tmp_path / "onehot.npy", 3)
    with pytest.raises(InputError, match=">= 0"):
        np.save(tmp_path / "negative.npy", np.array([1, -3]))
        load_labels(tmp_path / "negative.npy", 2)
    with pytest.raises(InputError, match="not found"):
        load_labels(tmp_path / "missing.npy", 1)
