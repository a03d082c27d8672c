"""Do ``bisect --target htp`` (the emulator) and ``bisect --target qnn-htp`` (the real HTP) rank the same layers?

On the bundled example, for each ``--rank-by`` (contribution, solo, isolated; modes split + layerwise, metric
sqnr): top-5 and top-10 overlap of the two rankings, and Spearman / Kendall correlation of every layer's
rank position. Then end-to-end agreement of the two DSP sides' final outputs (codes, top-1, SQNR).
``--split-half``: each side's rankings on samples [0, n) against its own on [n, 2n), i.e. how much of the
disagreement the choice of samples alone produces.

    /work/venv/bin/python scripts/compare_htp_rankings.py [--samples 8] [--arch 73] [--split-half]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from qdiverge.driver.ranking import RANK_BY, rank
from qdiverge.driver.session import bisect_report
from qdiverge.loading.inputs import input_source
from qdiverge.metrics import compare
from qdiverge.pipeline import QNN_HTP, open_workspace
from qdiverge.quant import quantize_aimet

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mobilenetv3"
TOPS = (5, 10)


def agreement(a: list[str], b: list[str]) -> dict[str, float]:
    """Top-k overlaps of two orders of the same layers, and the Spearman and Kendall correlations of their
    rank positions (permutations: no ties)."""
    pos_b = {name: i for i, name in enumerate(b)}
    y = np.array([pos_b[name] for name in a], dtype=np.float64)
    n = len(a)
    spearman = 1.0 - 6.0 * float(np.sum((np.arange(n) - y) ** 2)) / (n * (n * n - 1))
    pairs = np.sign(y[None, :] - y[:, None])[np.triu_indices(n, 1)]  # +1 where a's order holds in b
    kendall = float(pairs.sum()) / (n * (n - 1) / 2)
    tops = {f"top{k}": len(set(a[:k]) & set(b[:k])) for k in TOPS}
    return {**tops, "spearman": spearman, "kendall": kendall}


def rankings(ws, source, arch: int) -> tuple[dict[str, list[str]], object]:
    """Layer order (node names) per ``--rank-by`` from one split + layerwise run, and the result."""
    _, result = bisect_report(ws, source, ("split", "layerwise"), "sqnr", ["bisect"], htp_arch=arch)
    return {by: [o.node for o in rank(result, "sqnr", rank_by=by)] for by in RANK_BY}, result


def final_agreement(emu_ws, htp_ws, source, arch: int) -> dict[str, dict[str, float]]:
    """Final output codes of the emulator and of the sim, each against HTP's (all three run whole):
    fraction identical, max |diff| in LSB, top-1 agreement, SQNR."""
    emu, htp, sim = emu_ws.emulator(source), htp_ws.htp(source, arch), emu_ws.sim()
    codes: dict[str, list[np.ndarray]] = {"htp": [], "emulate": [], "sim": []}
    values: dict[str, list[np.ndarray]] = {"htp": [], "emulate": [], "sim": []}
    for sample in source:
        h, e, f = htp.run(sample), emu.run(sample), sim.run(sample)
        for o in emu_ws.model.outputs:
            for side, q in (("htp", h[o]), ("emulate", e[o])):
                codes[side].append(q.codes.astype(np.int64))
                values[side].append(q.dequantize())
            codes["sim"].append(quantize_aimet(f[o], h[o].encoding).astype(np.int64))
            values["sim"].append(f[o])
    ref, ref_values = np.concatenate(codes.pop("htp")), np.concatenate(values["htp"])
    result = {}
    for side, parts in codes.items():
        got = np.concatenate(parts)
        result[side] = {
            "codes_same": float(np.mean(got == ref)),
            "max_lsb": int(np.abs(got - ref).max()),
            "top1": float(np.mean(np.argmax(got, -1) == np.argmax(ref, -1))),
            "sqnr_db": compare(ref_values, np.concatenate(values[side])).sqnr_db,
        }
    return result


def workspaces(samples: int, inputs: Path = EXAMPLE / "inputs.npy"):
    """The example opened for ``--target htp`` and for ``--target qnn-htp``, and the first ``samples`` of
    ``inputs``."""
    files = (EXAMPLE / "model.onnx", EXAMPLE / "model.encodings", EXAMPLE / "quantsim_config.json")
    emu_ws, htp_ws = open_workspace(*files, target="htp"), open_workspace(*files, target=QNN_HTP)
    return emu_ws, htp_ws, input_source(emu_ws.model, inputs, samples, 0, emu_ws.encodings)


def split_half(samples: int, arch: int, first: dict[str, dict[str, list[str]]]) -> None:
    """Print each side's agreement between its rankings on samples [0, n) (``first``) and on [n, 2n)."""
    with tempfile.TemporaryDirectory() as tmp:
        second = Path(tmp) / "inputs.npy"
        np.save(second, np.load(EXAMPLE / "inputs.npy", mmap_mode="r")[samples : 2 * samples])
        emu_ws, htp_ws, source = workspaces(samples, second)
        later = {
            "htp (emulator)": rankings(emu_ws, source, arch)[0],
            "qnn-htp": rankings(htp_ws, source, arch)[0],
        }
    print(
        f"\n| side | --rank-by | samples 0-{samples - 1} vs {samples}-{2 * samples - 1}: top-5 | top-10 | Spearman |"
    )
    print("|---|---|---|---|---|")
    for side, orders in later.items():
        for by in RANK_BY:
            a = agreement(first[side][by], orders[by])
            print(f"| {side} | {by} | {a['top5']}/5 | {a['top10']}/10 | {a['spearman']:.2f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--arch", type=int, default=73)
    parser.add_argument("--split-half", action="store_true", help="also each side on the next n samples")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    emu_ws, htp_ws, source = workspaces(args.samples)
    emu_order, emu_result = rankings(emu_ws, source, args.arch)
    htp_order, htp_result = rankings(htp_ws, source, args.arch)
    print(
        "| --rank-by | top-5 overlap | top-10 overlap | Spearman | Kendall | top-5 qnn-htp | top-5 htp (emulator) |"
    )
    print("|---|---|---|---|---|---|---|")
    for by in RANK_BY:
        a = agreement(htp_order[by], emu_order[by])
        print(
            f"| {by} | {a['top5']}/5 | {a['top10']}/10 | {a['spearman']:.2f} | {a['kendall']:.2f}"
            f" | {', '.join(htp_order[by][:5])} | {', '.join(emu_order[by][:5])} |"
        )
    for name, result in (("qnn-htp", htp_result), ("htp (emulator)", emu_result)):
        for o, m in result.final_emu_vs_sim.items():
            print(f"\n{name} vs sim, {o}: SQNR {m.sqnr_db:.2f} dB, top-1 {m.top1:.2%}", end="")
    for side, f in final_agreement(emu_ws, htp_ws, source, args.arch).items():
        print(
            f"\n{side} vs qnn-htp, final output codes: {f['codes_same']:.2%} identical, max {f['max_lsb']} LSB,"
            f" top-1 {f['top1']:.2%}, SQNR {f['sqnr_db']:.2f} dB",
            end="",
        )
    print()
    if args.split_half:
        split_half(args.samples, args.arch, {"htp (emulator)": emu_order, "qnn-htp": htp_order})
    print(
        f"{args.samples} sample(s), htp_arch {args.arch}, {time.perf_counter() - start:.1f}s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
