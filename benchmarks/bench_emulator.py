"""Emulator speed and memory against onnxruntime CPU running the same model's QDQ form.

    /work/venv/bin/python benchmarks/bench_emulator.py [--batch 8] [--repeat 5]

Builds a MobileNetV3-Large-shaped network (seeded random weights, BN folded: 15 bottlenecks, SE blocks,
HardSwish / HardSigmoid, 224x224 input), derives per-tensor uint8 activation encodings from min/max over a
calibration batch on onnxruntime, int8 symmetric per-channel weights, then times ``Emulator.run`` (``--target``
profile, default ``htp``) and an onnxruntime session on the QDQ model (int weights, int32 bias, so ORT fuses
QLinear* ops) at the same batch in the same process, in alternating blocks of runs (both see the same machine
load; the load average is printed: on a shared machine, compare the median ratio too). With the ``fast`` extra
installed the emulator uses its compiled kernels; ``QDIVERGE_JIT=0`` measures it without them.

Peak memory is the VmHWM of one fresh subprocess per engine that imports and builds only that engine (numba's
libraries count for the emulator when it uses them), runs it once to warm up (lazy sessions, arenas), resets
the high-water mark and runs it again; the resident size after imports and the anonymous resident memory
(heap, arenas, tensors: no shared-library pages) after the run are printed too. The emulator returns the
heap its construction freed to the system (``malloc_trim``); onnxruntime's session is measured as it runs, and
once more after the same ``malloc_trim``, for the comparison with equal allocator hygiene.

Agreement: with the ``onnx`` profile the emulator is bit-exact against ORT's fused QDQ model on every
tensor. Two differences of the *setup*, not of the arithmetic, used to show as up to 37 LSB on the logits:
(1) the encodings gave the Conv output feeding a Relu its own encoding; a real AIMET export has none there
(Conv+Relu supergroup), the emulator fuses Conv+Relu as the target does and requantizes once, while ORT's
QDQ graph requantized twice (to the Conv grid, then to the Relu grid): up to 2 LSB at the first such layer,
growing through the network. (2) The QDQ model stores AIMET's integer weight codes
(``round_half_away(w / s - offset)`` in float32) while the emulator quantizes the float weights as a
converter does (``R(w / s) + z``); weights within float32 rounding of a half step (1 in 10^5 here) got
different codes. The benchmark now leaves supergroup-internal tensors unencoded and puts the float weights
on their grid (``snap_weights``), as an exported sim's weights are.
"""

from __future__ import annotations

import argparse
import contextlib
import os
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
        users = model.consumers.get(name, [])
        if len(users) == 1 and users[0].op_type == "Relu":
            continue  # inside an AIMET Conv+Relu supergroup: no encoding, as in a real export
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


def snap_weights(model, encset, path: Path) -> None:
    """Save ``model`` to ``path`` with every encoded weight on its grid (``dequantize(quantize(w))``).

    The QDQ model stores AIMET's integer weight codes (``round_half_away(w / s - offset)``, float32), the
    emulator re-quantizes the float weight as a converter does (``R(w / s) + z``). Off the grid the two
    disagree by one code for weights within float32 rounding of a half step (about 1 in 10^5 here), as a
    real AIMET export's float weights would not: its exported weights are the sim's, on the grid.
    """
    from qdiverge.quant import dequantize, quantize_aimet

    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    for tensor in proto.graph.initializer:
        enc = encset.params.get(tensor.name)
        if enc is not None:
            w = model.initializers[tensor.name]
            tensor.CopyFrom(numpy_helper.from_array(dequantize(quantize_aimet(w, enc), enc), tensor.name))
    onnx.save(proto, str(path))


def _setup(batch: int, workdir: Path):
    from qdiverge.loading.model import load_model

    path = workdir / "mnv3.onnx"
    onnx.save(build_mobilenetv3(batch), str(path))
    rng = np.random.default_rng(1)
    calib = rng.normal(0, 1, size=(batch, 3, 224, 224)).astype(np.float32)
    encset = make_encodings(load_model(path), calib)
    snap_weights(load_model(path), encset, path)
    return load_model(path), encset, rng.normal(0, 1, size=(batch, 3, 224, 224)).astype(np.float32)


def _emulator(workdir: Path, target: str):
    """The emulator on the model and encodings read back from the QDQ file (no pickled state)."""
    from qdiverge.encodings.load import load_encodings
    from qdiverge.engines.emulator.runner import Emulator
    from qdiverge.loading.model import load_model
    from qdiverge.profiles import load_profile

    model, encset, _ = load_encodings(None, load_model(workdir / "mnv3_qdq.onnx"))
    return Emulator(model, encset, load_profile(target))


def _ort_session(workdir: Path):
    from qdiverge.engines.base import make_session

    return make_session(onnx.load(str(workdir / "mnv3_qdq.onnx")))


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _memory_child(engine: str, workdir: Path, target: str) -> None:
    """Print (resident after imports, resident before the run, peak during one warm run, anonymous resident
    memory after it) in MB. Anonymous memory is the engine's own data (heap, arenas, tensors), without the
    file-backed pages of shared libraries.

    Each child imports what its engine needs: onnxruntime (and qdiverge's session helper) for ORT, the
    emulator (and with the fast extra numba, whose LLVM library alone is ~110 MB of resident file pages)
    for the emulator; that cost is the emulator's."""
    import onnxruntime  # noqa: F401

    from qdiverge.engines.base import release_free_memory

    if engine == "emulate":
        import qdiverge.engines.emulator.runner  # noqa: F401

    imports = _rss_mb("VmRSS")
    x = np.load(workdir / "x.npy")
    if engine == "emulate":
        emulator = _emulator(workdir, target)
        run = lambda: emulator.run({"input": x})  # noqa: E731
    else:
        session = _ort_session(workdir)
        run = lambda: session.run(["logits"], {"input": x})  # noqa: E731
    run()  # warm-up: lazily built per-node sessions, allocator arenas, first-touch pages
    before = _rss_mb("VmRSS")
    with contextlib.suppress(OSError):  # reset VmHWM: the peak of the run, not the setup
        Path("/proc/self/clear_refs").write_text("5")
    run()
    peak, anon = _rss_mb("VmHWM"), _rss_mb("RssAnon")
    # the same warm run once more after returning the freed heap to the system, as the emulator does itself
    # after building: what onnxruntime would need with the same allocator hygiene
    release_free_memory()
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    run()
    print(f"{imports:.1f} {before:.1f} {peak:.1f} {anon:.1f} {_rss_mb('VmHWM'):.1f}")


def _agreement(emu_codes, ort_logits: np.ndarray, enc) -> str:
    """Emulator logits codes against ORT's dequantized logits, in output steps (LSB)."""
    from qdiverge.quant import dequantize

    diff = np.abs(dequantize(emu_codes, enc).astype(np.float64) - ort_logits) / float(enc.scale[0])
    lsb = np.rint(diff).astype(np.int64)
    return (
        f"logits emulator (onnx profile) vs ORT QDQ: {np.mean(lsb == 0) * 100:.3f}% bit-exact, "
        f"max {lsb.max()} LSB, mean {lsb.mean():.4f} LSB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--target", default="htp", help="emulator profile (htp, onnx, tflite, hexagon-nn)")
    parser.add_argument("--memory-child", choices=["emulate", "ort"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        _memory_child(args.memory_child, Path(args.workdir), args.target)
        return
    from qdiverge.encodings.qdq_writer import write_qdq_model

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model, encset, x = _setup(args.batch, workdir)
        write_qdq_model(model, encset, workdir / "mnv3_qdq.onnx", int_weights=True, int32_bias=True)
        np.save(workdir / "x.npy", x)
        del model
        emulator, session = _emulator(workdir, args.target), _ort_session(workdir)  # here: timing only
        fallbacks = emulator.fallback_report()
        print(
            f"model: {len(emulator.model.nodes)} nodes, {len(emulator.steps)} emulator steps, "
            f"{len(fallbacks)} flagged"
        )
        for entry in fallbacks:
            print(f"  flagged: {entry}")
        run = {
            "emulate": lambda: emulator.run({"input": x}),
            "ort": lambda: session.run(["logits"], {"input": x}),
        }
        for fn in run.values():
            fn()  # warm-up
        load_before = os.getloadavg()[0]
        times: dict[str, list[float]] = {"emulate": [], "ort": []}
        cpu: dict[str, list[float]] = {"emulate": [], "ort": []}  # all threads: less sensitive to load
        # blocks of runs, alternated twice, so both engines see the same machine load; not run by run: ORT's
        # worker threads spin after each run (its default) and would slow the emulator's next run
        for _ in range(2):
            for key, fn in run.items():
                for _ in range(args.repeat):
                    t0, c0 = time.perf_counter(), time.process_time()
                    fn()
                    times[key].append(time.perf_counter() - t0)
                    cpu[key].append(time.process_time() - c0)
        best = {k: min(v) for k, v in times.items()}
        median = {k: float(np.median(v)) for k, v in times.items()}
        print(
            f"batch {args.batch}, 2 x {args.repeat} runs each, load average {load_before:.2f} -> "
            f"{os.getloadavg()[0]:.2f} ({os.cpu_count()} cpus)"
        )
        print(
            f"  emulator {best['emulate'] * 1e3:.0f} ms best / {median['emulate'] * 1e3:.0f} ms median; "
            f"onnxruntime QDQ {best['ort'] * 1e3:.0f} ms best / {median['ort'] * 1e3:.0f} ms median"
        )
        print(
            f"  time ratio emulator/ORT: {best['emulate'] / best['ort']:.2f} best, "
            f"{median['emulate'] / median['ort']:.2f} median"
        )
        c_emu, c_ort = (float(np.median(cpu[k])) for k in ("emulate", "ort"))
        print(
            f"  CPU time per run (all threads, median): emulator {c_emu * 1e3:.0f} ms, "
            f"onnxruntime QDQ {c_ort * 1e3:.0f} ms, ratio {c_emu / c_ort:.2f}"
        )
        if args.target == "onnx":  # ORT's own arithmetic: must agree bit for bit
            print(_agreement(run["emulate"]()["logits"].codes, run["ort"]()[0], encset.activations["logits"]))
        mem = {}
        for engine in ("emulate", "ort"):
            cmd = [
                sys.executable,
                __file__,
                "--memory-child",
                engine,
                "--workdir",
                tmp,
                "--target",
                args.target,
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            mem[engine] = [float(v) for v in out.split()]
            imports, before, peak, anon, _ = mem[engine]
            print(
                f"peak RSS of one warm run, {engine}: {peak:.0f} MB "
                f"(after imports {imports:.0f} MB, before the run {before:.0f} MB, "
                f"run + engine {peak - imports:.0f} MB; anonymous after the run {anon:.0f} MB)"
            )
        (ie, _, pe, ae, te), (io, _, po, ao, to) = mem["emulate"], mem["ort"]
        print(
            f"peak memory ratio emulator/ORT: {pe / po:.2f} "
            f"(above the import baseline: {(pe - ie) / (po - io):.2f}; anonymous: {ae / ao:.2f})"
        )
        print(
            f"both after returning their freed heap (malloc_trim): emulator {te:.0f} MB, ORT {to:.0f} MB, "
            f"ratio {te / to:.2f}"
        )


if __name__ == "__main__":
    main()
