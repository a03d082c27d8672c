"""Measure the emulator (and the sim) against Qualcomm's HTP backend on the bundled example.

Per op type (the emulator's steps, fused activations included): the fraction of output codes identical
to HTP's and the max |diff| in LSB, for

* layerwise: each step fed the sim's quantized inputs, on the emulator and alone on HTP (the sim's own
  output codes of that step are the "sim" column: same inputs by construction);
* end to end: the emulator and the sim run whole, compared with HTP's exposed codes at every tensor.

Then the top-5 layers of ``bisect --target qnn-htp`` vs ``bisect --target htp`` (split mode, sqnr).

    /work/venv/bin/python scripts/compare_htp_emulator.py [--samples 2] [--arch 73]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qdiverge.driver.bisect import Bisector
from qdiverge.driver.ranking import rank
from qdiverge.engines.qtensor import QTensor
from qdiverge.loading.inputs import input_source
from qdiverge.pipeline import open_workspace
from qdiverge.quant import quantize_aimet

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mobilenetv3"


@dataclass
class Agreement:
    """Codes compared with HTP's, pooled over the steps of one op type and all samples."""

    elements: int = 0
    same: int = 0
    max_diff: int = 0
    steps: set[str] = field(default_factory=set)

    def add(self, step: str, codes: np.ndarray, htp: np.ndarray) -> None:
        diff = np.abs(codes.astype(np.int64) - htp.astype(np.int64))
        self.elements += diff.size
        self.same += int(np.sum(diff == 0))
        self.max_diff = max(self.max_diff, int(diff.max(initial=0)))
        self.steps.add(step)

    @property
    def match(self) -> float:
        return self.same / self.elements if self.elements else float("nan")


Table = dict[str, dict[str, Agreement]]  # op type -> column -> agreement


def workspace(arch: int, samples: int):
    ws = open_workspace(EXAMPLE / "model.onnx", EXAMPLE / "model.encodings", EXAMPLE / "quantsim_config.json")
    ws.target = "qnn-htp"
    source = input_source(ws.model, EXAMPLE / "inputs.npy", samples, 0, ws.encodings)
    return ws, source, ws.emulator(source), ws.htp(source, arch)


def _codes(value: np.ndarray, enc) -> np.ndarray:
    return quantize_aimet(value, enc)


def measure(ws, source, emu, htp) -> tuple[Table, Table]:
    """(layerwise, end-to-end) agreement per op type, columns "emulate" and "sim"."""
    layer: Table = defaultdict(lambda: defaultdict(Agreement))
    whole: Table = defaultdict(lambda: defaultdict(Agreement))
    captured = sorted({t for s in emu.steps for t in (*s.inputs, *s.outputs)})
    for sample in source:
        sim_vals = ws.sim().run(sample, capture=captured)
        emu_vals = emu.run(sample, keep="all")
        htp_vals = htp.run(sample, keep="all")
        for step in emu.steps:
            op = "+".join(n.op_type for n in step.nodes)
            encs = emu.target_encodings
            feeds = {t: QTensor(_codes(sim_vals[t], encs[t]), encs[t]) for t in step.inputs if encs.get(t)}
            got_htp = htp.run_step(step, feeds)
            got_emu = emu.run_step(step, feeds)
            for t, q in got_htp.items():
                layer[op]["emulate"].add(step.name, got_emu[t].codes, q.codes)
                layer[op]["sim"].add(step.name, _codes(sim_vals[t], encs[t]), q.codes)
            for t in step.outputs:
                if t in htp_vals and encs.get(t) is not None:
                    whole[op]["emulate"].add(step.name, emu_vals[t].codes, htp_vals[t].codes)
                    whole[op]["sim"].add(step.name, _codes(sim_vals[t], encs[t]), htp_vals[t].codes)
    return layer, whole


def top_layers(ws, source, dsp, k: int = 5) -> list[str]:
    outputs = list(ws.model.outputs)
    encs = {o: dsp.target_encodings.get(o) for o in outputs}
    result = Bisector(ws.sim(), dsp, ws.float(), outputs, encs).run(source, ("split",))
    return [o.node for o in rank(result, "sqnr")[:k]]


def markdown(layer: Table, whole: Table) -> str:
    lines = [
        "| op (emulator step) | steps | layerwise emulate = HTP | max LSB | layerwise sim = HTP | max LSB |"
        " end-to-end emulate = HTP | max LSB | end-to-end sim = HTP | max LSB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for op in sorted(layer, key=lambda o: -layer[o]["emulate"].elements):
        cells = [op, str(len(layer[op]["emulate"].steps))]
        for table in (layer, whole):
            for col in ("emulate", "sim"):
                a = table.get(op, {}).get(col)
                cells += [f"{a.match:.2%}", str(a.max_diff)] if a and a.elements else ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--arch", type=int, default=73)
    parser.add_argument("--no-bisect", action="store_true", help="skip the top-5 overlap (the slow part)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    ws, source, emu, htp = workspace(args.arch, args.samples)
    layer, whole = measure(ws, source, emu, htp)
    print(markdown(layer, whole))
    if htp.hidden:
        print(f"\nHTP could not expose {len(htp.hidden)} tensor(s) without changing its outputs")
    if not args.no_bisect:
        top_htp = top_layers(ws, source, htp)
        top_emu = top_layers(ws, source, emu)
        overlap = [n for n in top_htp if n in top_emu]
        print(f"\ntop-5 qnn-htp: {top_htp}\ntop-5 emulate: {top_emu}\noverlap: {len(overlap)}/5 {overlap}")
    elapsed = time.perf_counter() - start
    print(f"\n{args.samples} sample(s), htp_arch {args.arch}, {elapsed:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
