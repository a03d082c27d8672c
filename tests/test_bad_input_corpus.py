"""The bad-input corpus, run through the real CLI: each case exits 2 with one ``error:`` line that names
the offending file (or option) and the problem, and no traceback.

Bad files are made in ``tmp_path`` from ``onnx_builders.small_net`` and its hand-written encodings.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_harness import qdiverge
from encodings_fixtures import SMALL_NET, v061, v100, v200, write
from onnx import TensorProto, helper
from onnx_builders import GraphBuilder, save, small_net


class Case:
    """Files under ``tmp``: the CLI arguments, the name the message must contain, and the problem."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.model = save(small_net(), tmp)
        self.enc = write(v100(SMALL_NET), tmp, "good.encodings")
        self.out = tmp / "out.npz"

    def run(self, *extra: object, model: Path | None = None, enc: Path | None = None) -> list[object]:
        return ["run", model or self.model, enc or self.enc, "-o", self.out, *extra]

    def onnx(self, proto: onnx.ModelProto, name: str = "bad.onnx") -> Path:
        return save(proto, self.tmp, name)

    def json(self, data: object, name: str = "bad.encodings") -> Path:
        path = self.tmp / name
        path.write_text(data if isinstance(data, str) else json.dumps(data))
        return path

    def encodings_with(self, name: str = "bad.encodings", **changes: object) -> Path:
        data = v100(SMALL_NET)
        data["activation_encodings"][0].update(changes)  # the 'input' entry
        return self.json(data, name)

    def text(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path


Build = Callable[[Case], tuple[list[object], str, str]]


def _external(location: str) -> Callable[[Case], tuple[list[object], str, str]]:
    def build(c: Case):
        proto = small_net()
        tensor = proto.graph.initializer[0]
        onnx.external_data_helper.set_external_data(tensor, location)
        tensor.data_location = TensorProto.EXTERNAL
        tensor.ClearField("float_data")
        tensor.ClearField("raw_data")
        path = c.onnx(proto)
        return c.run(model=path), "bad.onnx", "outside the model folder"

    return build


def _symlink_out(c: Case):
    os.symlink("/etc/passwd", c.tmp / "weights.data")
    return _external("weights.data")(c)


def _external_file(c: Case, data: bytes | None):
    path = str(c.tmp / "ext.onnx")
    onnx.save_model(small_net(), path, save_as_external_data=True, location="ext.data", size_threshold=0)
    (c.tmp / "ext.data").unlink()
    if data is not None:
        (c.tmp / "ext.data").write_bytes(data)
    return c.run(model=c.tmp / "ext.onnx"), "ext.onnx", "is missing" if data is None else "external data"


def _truncated(c: Case):
    raw = c.model.read_bytes()
    (c.tmp / "cut.onnx").write_bytes(raw[: len(raw) // 2])
    return c.run(model=c.tmp / "cut.onnx"), "cut.onnx", "not a readable ONNX model"


def _garbage(c: Case):
    (c.tmp / "junk.onnx").write_bytes(bytes(range(256)) * 4)
    return c.run(model=c.tmp / "junk.onnx"), "junk.onnx", "not a readable ONNX model"


def _modified(change: Callable[[onnx.ModelProto], None], needle: str):
    def build(c: Case):
        proto = small_net()
        change(proto)
        return c.run(model=c.onnx(proto)), "bad.onnx", needle

    return build


def _dynamic(proto):
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"


def _no_value_constant(proto):
    proto.graph.node.insert(0, helper.make_node("Constant", [], ["c"], "const"))


def _conv_weight_mismatch(proto):
    w = onnx.numpy_helper.to_array(proto.graph.initializer[0])[:, :2]
    proto.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(w, "conv1.weight"))


def _if_model(c: Case):
    g = GraphBuilder()
    g.input("input", (1, 4))
    branch = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["t"])],
        "branch",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4])],
    )
    cond = g.const("cond", np.array(True))
    g.nodes.append(helper.make_node("If", [cond], ["y"], "if1", then_branch=branch, else_branch=branch))
    g.output("y")
    return c.run(model=c.onnx(g.build())), "bad.onnx", "control-flow op If"


def _cycle(c: Case):
    g = GraphBuilder()
    g.op("Add", [g.input("input", (1, 4)), "b"], "a")
    g.op("Relu", ["a"], "b")
    g.output("b")
    return c.run(model=c.onnx(g.build())), "bad.onnx", "not a DAG"


def _enc(needle: str, **changes):
    return lambda c: (c.run(enc=c.encodings_with(**changes)), "bad.encodings", needle)


def _raw_json(text: str, needle: str):
    return lambda c: (c.run(enc=c.json(text)), "bad.encodings", needle)


def _enc_data(make: Callable[[], object], needle: str):
    return lambda c: (c.run(enc=c.json(make())), "bad.encodings", needle)


def _duplicated():
    data = v100(SMALL_NET)
    data["activation_encodings"].append(copy.deepcopy(data["activation_encodings"][0]))
    return data


def _per_channel_mismatch():
    return v200({**SMALL_NET, "conv1.weight": (8, True, [0.1, 0.2, 0.3], [-128] * 3, True)})


def _torch_encodings():
    data = v061(SMALL_NET)
    data["activation_encodings"] = {"conv1": {"input": {"0": data["activation_encodings"]["input"][0]}}}
    return data


def _binary(c: Case):
    (c.tmp / "bad.encodings").write_bytes(b"PK\x03\x04\x80\x81\xfe" * 8)
    return c.run(enc=c.tmp / "bad.encodings"), "bad.encodings", "not a text file"


def _config(mutate: Callable[[dict], None], needle: str):
    def build(c: Case):
        cfg = json.loads((FIXTURE / "quantsim_config.json").read_text())
        mutate(cfg)
        return c.run("--config", c.json(cfg, "cfg.json")), "cfg.json", needle

    return build


def _profile(text: str, needle: str):
    return lambda c: (c.run("--target", c.text("target.yaml", text)), "target.yaml", needle)


def _inputs(make: Callable[[Case], Path], needle: str):
    def build(c: Case):
        path = make(c)
        return c.run("--inputs", path), path.name, needle

    return build


def _npy(name: str, array: np.ndarray, pickle: bool = False):
    def make(c: Case) -> Path:
        path = c.tmp / name
        np.save(path, array, allow_pickle=pickle)
        return path

    return make


def _npz(name: str, **arrays: np.ndarray):
    def make(c: Case) -> Path:
        path = c.tmp / name
        np.savez(path, **arrays)
        return path

    return make


def _truncated_npy(c: Case) -> Path:
    path = _npy("x.npy", np.zeros(SAMPLE, np.float32))(c)
    path.write_bytes(path.read_bytes()[:100])
    return path


def _list(text: str, raw: bytes | None = None):
    def make(c: Case) -> Path:
        if raw is not None:
            (c.tmp / "x.raw").write_bytes(raw)
        return c.text("input_list.txt", text)

    return make


def _two_inputs(c: Case):
    g = GraphBuilder()
    g.output(g.add(g.input("a", (1, 4)), g.input("b", (1, 4)), "sum"))
    enc = {n: (8, False, [1 / 64], [-128], False) for n in ("a", "b", "sum_out")}
    path = c.tmp / "x.npy"
    np.save(path, np.zeros((1, 4), np.float32))
    args = ["run", c.onnx(g.build()), write(v100(enc), c.tmp, "two.encodings"), "-o", c.out, "--inputs", path]
    return args, "x.npy", "one-input models"


FIXTURE = Path(__file__).parent / "fixtures" / "aimet" / "mix_pt_asym"
SAMPLE = (1, 3, 8, 8)

CASES: dict[str, Build] = {
    # ONNX files
    "onnx-truncated": _truncated,
    "onnx-garbage": _garbage,
    "onnx-empty": lambda c: (c.run(model=c.text("empty.onnx", "")), "empty.onnx", "no nodes"),
    "onnx-typo-in-path": lambda c: (c.run(model=c.tmp / "modle.onnx"), "modle.onnx", "did you mean"),
    "onnx-external-parent": _external("../../etc/passwd"),
    "onnx-external-absolute": _external("/etc/passwd"),
    "onnx-external-symlink-out": _symlink_out,
    "onnx-external-missing": lambda c: _external_file(c, None),
    "onnx-external-short": lambda c: _external_file(c, b"\0" * 10),
    "onnx-constant-without-value": _modified(_no_value_constant, "Constant node 'const'"),
    "onnx-no-outputs": _modified(lambda p: p.graph.ClearField("output"), "declares no outputs"),
    "onnx-ghost-output": _modified(lambda p: setattr(p.graph.output[0], "name", "ghost"), "'ghost'"),
    "onnx-dynamic-shape": _modified(_dynamic, "--input-shape input:1,3,8,8"),
    "onnx-control-flow": _if_model,
    "onnx-cycle": _cycle,
    "onnx-conv-weight-mismatch": lambda c: (
        c.run(model=c.onnx(_apply(small_net(), _conv_weight_mismatch))),
        "conv1",
        "onnxruntime failed",
    ),
    # encodings JSON
    "enc-typo-in-path": lambda c: (c.run(enc=c.tmp / "good.encoding"), "good.encoding", "did you mean"),
    "enc-malformed": _raw_json('{"version": "1.0.0",\n "activation_encodings": [,]}', "line 2 column"),
    "enc-truncated": lambda c: (c.run(enc=c.json(c.enc.read_text()[:50])), "bad.encodings", "malformed JSON"),
    "enc-binary": _binary,
    "enc-deeply-nested": _raw_json("[" * 50000 + "]" * 50000, "nested too deeply"),
    "enc-top-level-list": _raw_json("[1, 2]", "expected a JSON object"),
    "enc-unknown-version": _enc_data(
        lambda: {**v100(SMALL_NET), "version": "3.0.0"}, "unknown encodings version"
    ),
    "enc-scale-nan": _raw_json(json.dumps(v100(SMALL_NET)).replace("0.0260009765625", "NaN"), "scale nan"),
    "enc-scale-inf": _raw_json(json.dumps(v100(SMALL_NET)).replace("0.0260009765625", "1e999"), "scale inf"),
    "enc-scale-zero": _enc("scale 0.0", scale=[0.0]),
    "enc-scale-negative": _enc("scale -0.5", scale=[-0.5]),
    "enc-scale-denormal": _enc("float32's normal range", scale=[1e-320]),
    "enc-scale-wrong-type": _enc("scale must hold numbers", scale={"a": 1}),
    "enc-bitwidth-0": _enc("bitwidth 0 not in 2..32", bw=0),
    "enc-bitwidth-1": _enc("bitwidth 1 not in 2..32", bw=1),
    "enc-bitwidth-33": _enc("bitwidth 33 not in 2..32", bw=33),
    "enc-bitwidth-string": _enc("bw must be an integer", bw="8"),
    "enc-bitwidth-400-digits": _raw_json(
        json.dumps(v100(SMALL_NET)).replace('"bw": 8', '"bw": ' + "9" * 400, 1), "bw must be an integer"
    ),
    "enc-offset-positive": _enc("offset 5 is outside", offset=[5.0]),
    "enc-offset-too-negative": _enc("offset -256 is outside", offset=[-256.0]),
    "enc-offset-fraction": _enc("not an integer", offset=[-3.5]),
    "enc-per-channel-length": _enc_data(_per_channel_mismatch, "3 per-channel scales"),
    "enc-duplicated-name": _enc_data(_duplicated, "more than one encoding"),
    "enc-unknown-tensor": _enc_data(
        lambda: v100({**SMALL_NET, "relu1_ou": SMALL_NET["relu1_out"]}), "did you mean 'relu1_out'"
    ),
    "enc-200-bad-dtype": _enc_data(
        lambda: {"version": "2.0.0", "encodings": [{"name": "input", "output_dtype": "qint8", "y_scale": 1}]},
        "output_dtype",
    ),
    "enc-aimet-torch-file": _enc_data(_torch_encodings, "_torch.encodings"),
    # quantsim config
    "config-unknown-key": _config(lambda c: c.__setitem__("bogus", 1), "config.bogus: unknown key"),
    "config-bool-flag": _config(
        lambda c: c["defaults"]["ops"].__setitem__("is_output_quantized", True), 'expected the string "True"'
    ),
    "config-kernel-bitwidth": _config(
        lambda c: c["defaults"].__setitem__(
            "supported_kernels", [{"activation": {"bitwidth": 3, "dtype": "int"}}]
        ),
        "expected 4, 8, 16 or 32",
    ),
    "config-missing-section": _config(lambda c: c.pop("params"), "params: required section is missing"),
    # target profiles
    "profile-unknown-key": _profile("bogus: 1\n", "'bogus' is not a known field"),
    "profile-bad-value": _profile("conv: {multiplier: q99}\n", "'q99' is not one of"),
    "profile-wrong-type": _profile("bias_bits: true\n", "expected int, got bool"),
    "profile-python-tag": _profile("!!python/object/apply:os.system ['true']\n", "not valid YAML"),
    "profile-unknown-name": lambda c: (c.run("--target", "htpp"), "htpp", "unknown target profile"),
    # inputs
    "inputs-wrong-shape": _inputs(_npy("x.npy", np.zeros((2, 3, 4, 4), np.float32)), "does not fit input"),
    "inputs-wrong-dtype": _inputs(_npy("x.npy", np.zeros(SAMPLE, np.complex64)), "dtype complex64"),
    "inputs-pickled-npy": _inputs(_npy("x.npy", np.array([{"a": 1}], dtype=object), True), "pickled"),
    "inputs-pickled-npz": _inputs(_npz("x.npz", input=np.array([{"a": 1}], dtype=object)), "pickled"),
    "inputs-npz-wrong-key": _inputs(_npz("x.npz", other=np.zeros(SAMPLE, np.float32)), "no array for"),
    "inputs-npy-no-samples": _inputs(_npy("x.npy", np.zeros((0, 3, 8, 8), np.float32)), "does not fit"),
    "inputs-npy-truncated": _inputs(_truncated_npy, "not a readable .npy"),
    "inputs-nan-values": _inputs(_npy("x.npy", np.full(SAMPLE, np.nan, np.float32)), "NaN or infinite"),
    "inputs-wrong-count": _two_inputs,
    "inputs-empty-list": _inputs(_list("# nothing\n"), "names no raw files"),
    "inputs-list-unclosed-quote": _inputs(_list('"x.raw\n'), "cannot split the line"),
    "inputs-list-too-many-files": _inputs(_list("x.raw x.raw\n", b"\0" * 768), "2 file(s) on the line"),
    "inputs-raw-wrong-size": lambda c: (
        c.run("--inputs", _list("x.raw\n", b"\0" * 7)(c)),
        "x.raw",
        "7 bytes; input 'input'",
    ),
    # options
    "option-negative-samples": lambda c: (c.run("--samples", "-1"), "--samples", "must be >= 0"),
    "option-bad-input-shape": lambda c: (c.run("--input-shape", "input:1,x"), "--input-shape", "positive"),
    "option-huge-input-shape": lambda c: (
        [*c.run(model=c.onnx(_apply(small_net(), _dynamic_hw))), "--input-shape", "input:1,3,100000,100000"],
        "bad.onnx",
        "GiB of memory",
    ),
    "option-output-folder-missing": lambda c: (
        ["run", c.model, c.enc, "-o", c.tmp / "nowhere" / "o.npz"],
        "nowhere",
        "does not exist",
    ),
}


def _apply(proto: onnx.ModelProto, change: Callable[[onnx.ModelProto], None]) -> onnx.ModelProto:
    change(proto)
    return proto


def _dynamic_hw(proto):
    for d in proto.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.dim_param = "hw"


def test_corpus_is_large_enough():
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_exits_2_with_one_line(tmp_path, name):
    args, blame, needle = CASES[name](Case(tmp_path))
    result = qdiverge(*args)
    assert result.code == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.lines) == 1, result.stderr
    line = result.lines[0]
    assert line.startswith("error: "), line
    assert blame in line and needle in line, line
    assert not result.stdout
    assert not (tmp_path / "out.npz").exists()


def test_debug_shows_the_traceback(tmp_path):
    c = Case(tmp_path)
    args, _, needle = CASES["enc-scale-zero"](c)
    result = qdiverge("--debug", *args)
    assert result.code == 2
    assert "Traceback" in result.stderr and needle in result.stderr.splitlines()[-1]


def test_missing_emulator_kernel_runs_in_float_with_a_visible_flag(tmp_path):
    g = GraphBuilder()
    g.output(g.act("Relu", g.act("Sin", g.input("input", (1, 4)), "sin"), "relu"))
    enc = {
        "input": (8, False, [1 / 64], [-128], False),
        "sin_out": (8, False, [1 / 128], [-128], False),
        "relu_out": (8, False, [1 / 256], [0], False),
    }
    out = tmp_path / "out.npz"
    result = qdiverge(
        "run", save(g.build(), tmp_path), write(v100(enc), tmp_path), "--engine", "emulate", "-o", out
    )
    assert result.code == 0, result.stderr
    assert "FLAG" in result.stderr and "float fallback" in result.stderr
    assert "no kernel for Sin" in result.stderr
    assert np.load(out)["relu_out"].shape == (1, 1, 4)


def test_negative_top_is_a_usage_error(tmp_path):
    model, enc = save(small_net(), tmp_path), write(v100(SMALL_NET), tmp_path)
    result = qdiverge("check", model, enc, "--top", "-1")
    assert result.code == 2 and "--top" in result.stderr and "Traceback" not in result.stderr
