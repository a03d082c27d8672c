"""Emulator speed and memory against onnxruntime CPU running the same model's QDQ form.

    /work/venv/bin/python benchmarks/bench_emulator.py [--batch 8] [--repeat 5]

Builds a MobileNetV3-Large-shaped network (seeded random weights, BN folded: 15 bottlenecks, SE blocks,
HardSwish / HardSigmoid, 224x224 input), derives per-tensor uint8 activation encodings from min/max over a
calibration batch on onnxruntime, int8 symmetric per-channel weights, then times ``Emulator.run`` (``onnx``
profile) and an onnxruntime session on the QDQ model (int weights, int32 bias, so ORT fuses QLinear* ops)
at the same batch, in the same process. Peak memory is the peak RSS (VmHWM) of one subprocess per engine.
"""

from __future__ import annotations

import argparse
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# kernel, expansion, out channels, squeeze-excite, activation, stride (MobileNetV3-Large, Howard et al. 2019)
BNECK = [
    (3, 16, 16, False, "Relu", 1),
    (3, 64, 24, False, "Relu", 2),
    (3, 72, 24, False, "Relu", 1),
    (5, 72, 40, True, "Relu", 2),
    (5, 120, 40, True, "Relu", 1),
    (5, 120, 40, True, "Relu", 1),
    (3, 240, 80, False, "HardSwish", 2),
    (3, 200, 80, False, "HardSwish", 1),
    (3, 184, 80, False, "HardSwish", 1),
    (3, 184, 80, False, "HardSwish", 1),
    (3, 480, 112, True, "HardSwish", 1),
    (3, 672, 112, True, "HardSwish", 1),
    (5, 672, 160, True, "HardSwish", 2),
    (5, 960, 160, True, "HardSwish", 1),
    (5, 960, 160, True, "HardSwish", 1),
]


class _Builder:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, op: str) -> str:
        self.count += 1
        return f"{op.lower()}_{self.count}"

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        name = self.name(op)
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def const(self, value: np.ndarray) -> str:
        name = self.name("w")
        self.inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def conv(
        self, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1, act: str | None = None
    ) -> str:
        fan_in = cin // group * k * k
        w = self.rng.normal(0, np.sqrt(2.0 / fan_in), size=(cout, cin // group, k, k))
        b = self.rng.normal(0, 0.1, size=cout)
        y = self.node(
            "Conv",
            [x, self.const(w), self.const(b)],
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[k // 2] * 4,
            group=group,
        )
        return self.node(act, [y]) if act else y

    def gemm(self, x: str, cin: int, cout: int, act: str | None = None) -> str:
        w = self.rng.normal(0, np.sqrt(2.0 / cin), size=(cout, cin))
        y = self.node("Gemm", [x, self.const(w), self.const(self.rng.normal(0, 0.1, size=cout))], transB=1)
        return self.node(act, [y]) if act else y


def build_mobilenetv3(batch: int, seed: int = 0) -> onnx.ModelProto:
    b = _Builder(seed)
    x = b.conv("input", 3, 16, 3, 2, act="HardSwish")
    cin = 16
    for k, exp, out, se, act, stride in BNECK:
        y = b.conv(x, cin, exp, 1, act=act) if exp != cin else x
        y = b.conv(y, exp, exp, k, stride, group=exp, act=act)
        if se:
            squeeze = max(8, (exp // 4 + 4) // 8 * 8)
            s = b.node("GlobalAveragePool", [y])
            s = b.conv(s, exp, squeeze, 1, act="Relu")
            s = b.node("HardSigmoid", [b.conv(s, squeeze, exp, 1)], alpha=1.0 / 6, beta=0.5)
            y = b.node("Mul", [y, s])
        y = b.conv(y, exp, out, 1)
        x = b.node("Add", [x, y]) if stride == 1 and cin == out else y
        cin = out
    x = b.conv(x, cin, 960, 1, act="HardSwish")
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x])])
    x = b.gemm(b.gemm(x, 960, 1280, act="HardSwish"), 1280, 1000)
    b.nodes[-1].output[0] = "logits"
    graph = helper.make_graph(
        b.nodes,
        "mobilenetv3_large",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 1000])],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def make_encodings(model, calib: np.ndarray):
    """Per-tensor uint8 activations from min/max on onnxruntime; int8 symmetric per-channel weights."""
    from qdiverge.encodings.schema import EncodingSet, encoding_from_range, make_encoding
    from qdiverge.engines.base import expose_outputs, make_session

    names = [n.outputs[0] for n in model.nodes]
    sess = make_session(expose_outputs(model.proto, names))
    values = dict(zip(names, sess.run(names, {"input": calib}), strict=True))
    encset = EncodingSet(source="bench", version="bench")
    encset.activations["input"] = encoding_from_range("input", float(calib.min()), float(calib.max()))
    for name, v in values.items():
        encset.activations[name] = encoding_from_range(name, float(v.min()), float(v.max()))
    for node in model.nodes:
        if node.op_type in ("Conv", "Gemm"):
            w = model.initializers[node.inputs[1]]
            bound = np.abs(w.reshape(w.shape[0], -1)).max(axis=1).astype(np.float64)
            per_channel = node.op_type == "Conv"
            scale = (
                np.maximum(bound, 1e-8) / 127.0 if per_channel else np.array([max(bound.max(), 1e-8) / 127.0])
            )
            encset.params[node.inputs[1]] = make_encoding(
                node.inputs[1],
                8,
                scale,
                -128.0,
                signed=True,
                symmetric=True,
                axis=0 if per_channel else None,
                is_param=True,
            )
    return encset


def _setup(batch: int, workdir: Path):
    from qdiverge.loading.model import load_model

    path = workdir / "mnv3.onnx"
    if not path.exists():
        onnx.save(build_mobilenetv3(batch), str(path))
    model = load_model(path)
    rng = np.random.default_rng(1)
    calib = rng.normal(0, 1, size=(batch, 3, 224, 224)).astype(np.float32)
    return model, make_encodings(model, calib), rng.normal(0, 1, size=(batch, 3, 224, 224)).astype(np.float32)


def _engines(model, encset, workdir: Path):
    from qdiverge.encodings.qdq import write_qdq_model
    from qdiverge.engines.base import make_session
    from qdiverge.engines.emulator.runner import Emulator
    from qdiverge.profiles import load_profile

    emulator = Emulator(model, encset, load_profile("onnx"))
    qdq = write_qdq_model(model, encset, workdir / "mnv3_qdq.onnx", int_weights=True, int32_bias=True)
    session = make_session(qdq)
    return (lambda x: emulator.run({"input": x})), (lambda x: session.run(["logits"], {"input": x})), emulator


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _memory_child(engine: str, batch: int, workdir: Path) -> None:
    from qdiverge.loading.model import load_model

    # no calibration here: its all-tensor onnxruntime pass would dominate the peak
    with (workdir / "setup.pkl").open("rb") as fh:
        encset, x = pickle.load(fh)
    model = load_model(workdir / "mnv3.onnx")
    run_emu, run_ort, _ = _engines(model, encset, workdir)
    del model
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: measure the run, not the setup
    base = _peak_rss_mb()
    (run_emu if engine == "emulate" else run_ort)(x)
    print(f"{base:.1f} {_peak_rss_mb():.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--memory-child", choices=["emulate", "ort"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        _memory_child(args.memory_child, args.batch, Path(args.workdir))
        return
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model, encset, x = _setup(args.batch, workdir)
        run_emu, run_ort, emulator = _engines(model, encset, workdir)
        with (workdir / "setup.pkl").open("wb") as fh:
            pickle.dump((encset, x), fh)
        fallbacks = emulator.fallback_report()
        print(
            f"model: {len(model.nodes)} nodes, {len(emulator.steps)} emulator steps, {len(fallbacks)} flagged"
        )
        for entry in fallbacks:
            print(f"  flagged: {entry}")
        times = {"emulate": [], "ort": []}
        for _ in range(args.repeat):
            for key, fn in (("emulate", run_emu), ("ort", run_ort)):
                t0 = time.perf_counter()
                fn(x)
                times[key].append(time.perf_counter() - t0)
        emu_codes = run_emu(x)["logits"].dequantize()
        ort_out = run_ort(x)[0]
        step = float(encset.activations["logits"].scale[0])
        diff = np.abs(emu_codes - ort_out) / step
        t_emu, t_ort = min(times["emulate"]), min(times["ort"])
        print(
            f"batch {args.batch}: emulator {t_emu * 1e3:.0f} ms, onnxruntime QDQ {t_ort * 1e3:.0f} ms "
            f"(best of {args.repeat}); time ratio {t_emu / t_ort:.2f}"
        )
        print(f"logits emulator vs ORT: max {diff.max():.0f} LSB, mean {diff.mean():.3f} LSB")
        peaks = {}
        for engine in ("emulate", "ort"):
            res = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--batch",
                    str(args.batch),
                    "--memory-child",
                    engine,
                    "--workdir",
                    tmp,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            base, peak = (float(v) for v in res.stdout.split())
            peaks[engine] = peak
            print(f"peak RSS during one run, {engine}: {peak:.0f} MB (resident before the run {base:.0f} MB)")
        print(f"peak memory ratio {peaks['emulate'] / peaks['ort']:.2f}")


if __name__ == "__main__":
    main()
