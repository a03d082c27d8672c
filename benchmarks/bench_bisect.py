"""Split-mode bisection cost: the emulator prefix runs once per sample and every cut runs only the sim suffix.

    /work/venv/bin/python benchmarks/bench_bisect.py [--samples 8] [--skip-large]

1. The bundled example (examples/mobilenetv3, its inputs.npy): times one full sim pass per sample and
   ``Bisector.run`` in split mode, and prints

       ratio = split-mode time / (samples x cuts x one full sim pass)

   A naive bisection (a full run per cut) costs at least 1 on this scale; the suffix-only design must be
   well under 1. "cold" includes building one onnxruntime suffix session per cut (paid once per run),
   "warm" reruns with the sessions cached.
2. A MobileNetV3-Large-size model (``bench_emulator.build_mobilenetv3``, 224x224, seeded weights) with
   encodings calibrated on onnxruntime, written as AIMET 1.0.0 JSON, run through ``qdiverge bisect`` (all
   default modes: split, layerwise, cumulative) on ``--samples`` inputs drawn like the calibration data
   (``--inputs`` .npy): total wall time, loading and report included.

Both numbers depend on the machine's load, printed first (``os.getloadavg``); the example's times are given
as wall time and as this process's CPU time, which a loaded machine disturbs less.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mobilenetv3"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _counting(engine, method: str) -> list[int]:
    """Wrap ``engine.method`` to count its calls (the emulator must run once per sample)."""
    calls = [0]
    inner = getattr(engine, method)

    def wrapped(*args, **kwargs):
        calls[0] += 1
        return inner(*args, **kwargs)

    setattr(engine, method, wrapped)
    return calls


def bench_example(samples: int) -> None:
    from qdiverge.driver.bisect import Bisector
    from qdiverge.loading.inputs import input_source
    from qdiverge.pipeline import open_workspace

    ws = open_workspace(
        EXAMPLE / "model.onnx", EXAMPLE / "model.encodings", EXAMPLE / "quantsim_config.json", None, "htp"
    )
    source = input_source(ws.model, EXAMPLE / "inputs.npy", samples, 0, ws.encodings)
    sim = ws.sim()
    batch = list(source)
    sim.run(batch[0])  # warm-up: session creation is not a pass
    passes = [_timed(sim.run, sample)[1] for _ in range(3) for sample in batch]
    t_sim = tuple(statistics.median(p[k] for p in passes) for k in range(2))

    run_ws = ws.batched(source)  # as `qdiverge bisect` does: several samples per call when that is exact
    emu = run_ws.emulator(source)
    outputs = list(ws.model.outputs)
    encodings = {o: emu.target_encodings.get(o) for o in outputs}
    bisector = Bisector(run_ws.sim(), emu, run_ws.float(), outputs, encodings)
    emu_runs = _counting(emu, "run")
    cuts = len(bisector.cuts)
    print(
        f"bundled example: {len(ws.model.nodes)} nodes, {len(emu.steps)} emulator steps, {cuts} cuts,"
        f" {source.samples} samples ({run_ws.batch} per engine call); one full sim pass of one sample (median)"
        f" {t_sim[0] * 1e3:.1f} ms wall, {t_sim[1] * 1e3:.1f} ms CPU"
    )
    naive = tuple(source.samples * cuts * t for t in t_sim)
    print(f"  samples x cuts x one full sim pass = {naive[0]:.2f} s wall, {naive[1]:.2f} s CPU")
    spent = {}
    for label in ("cold", "warm"):
        emu_runs[0] = 0
        result, spent[label] = _timed(bisector.run, source, ("split",), None, None, run_ws.batch)
        wall, cpu = spent[label]
        print(
            f"  split mode, {label}: {wall:.2f} s wall, {cpu:.2f} s CPU; emulator passes {emu_runs[0]}"
            f" (one per batch), suffix runs {result.suffix_runs};"
            f" ratio {wall / naive[0]:.3f} wall, {cpu / naive[1]:.3f} CPU"
        )
    built = [spent["cold"][k] - spent["warm"][k] for k in range(2)]
    print(
        f"  of which building the {cuts} suffix sessions (once per run): {built[0]:.2f} s wall,"
        f" {built[1]:.2f} s CPU"
    )


def _timed(fn, *args):
    """``(fn(*args), (wall seconds, CPU seconds of this process, all threads))``."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return result, (time.perf_counter() - wall, time.process_time() - cpu)


def _encoding_entry(name: str, enc) -> dict:
    scale = [float(s) for s in np.asarray(enc.scale, dtype=np.float64).reshape(-1)]
    offset = [float(o) for o in np.broadcast_to(np.asarray(enc.offset).reshape(-1), (len(scale),))]
    return {
        "name": name,
        "dtype": "INT",
        "bw": enc.bitwidth,
        "is_sym": bool(enc.symmetric),
        "scale": scale,
        "offset": offset,
        "enc_type": "PER_CHANNEL" if len(scale) > 1 else "PER_TENSOR",
    }


def write_v100(encset, path: Path) -> None:
    """An ``EncodingSet`` as AIMET 1.0.0 JSON (activations and params)."""
    data = {
        "version": "1.0.0",
        "activation_encodings": [_encoding_entry(n, e) for n, e in sorted(encset.activations.items())],
        "param_encodings": [_encoding_entry(n, e) for n, e in sorted(encset.params.items())],
    }
    path.write_text(json.dumps(data))


def bench_large(samples: int, workdir: Path) -> None:
    from bench_emulator import build_mobilenetv3, make_encodings

    from qdiverge.cli import main
    from qdiverge.loading.model import load_model

    # the same seeded weights at batch 8 (calibration) and batch 1 (one sample per bisect step)
    calib_path, model_path = workdir / "mnv3_calib.onnx", workdir / "mnv3.onnx"
    onnx.save(build_mobilenetv3(8), str(calib_path))
    onnx.save(build_mobilenetv3(1), str(model_path))
    calib = np.random.default_rng(1).normal(0, 1, size=(8, 3, 224, 224)).astype(np.float32)
    encset = make_encodings(load_model(calib_path), calib)
    encodings = workdir / "mnv3.encodings"
    write_v100(encset, encodings)
    inputs = workdir / "inputs.npy"  # drawn like the calibration data, so the encodings fit them
    np.save(inputs, np.random.default_rng(2).normal(0, 1, size=(samples, 3, 224, 224)).astype(np.float32))
    report = workdir / "report.json"
    argv = [
        "qdiverge",
        "-q",
        "bisect",
        str(model_path),
        str(encodings),
        "--inputs",
        str(inputs),
        "--format",
        "json",
        "-o",
        str(report),
    ]
    err = io.StringIO()
    t0 = time.perf_counter()
    with mock.patch.object(sys, "argv", argv), contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as exc:
            if exc.code:
                raise RuntimeError(f"qdiverge bisect failed ({exc.code}): {err.getvalue()}") from None
    elapsed = time.perf_counter() - t0
    data = json.loads(report.read_text())
    top = data["layers"][0]
    print(
        f"MobileNetV3-Large size (224x224, {len(load_model(model_path).nodes)} nodes,"
        f" {len(data['layers'])} layers): qdiverge bisect (all default modes), {samples} samples:"
        f" {elapsed:.1f} s total; final SQNR {data['summary'][0]['emu_vs_sim']['sqnr_db']:.1f} dB; "
        f"top layer {top['node']} ({top['op_type']})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--skip-large", action="store_true", help="only the bundled example")
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    bench_example(args.samples)
    if not args.skip_large:
        with tempfile.TemporaryDirectory() as tmp:
            bench_large(args.samples, Path(tmp))


if __name__ == "__main__":
    main()
