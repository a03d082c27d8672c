"""Run the single-op HTP probes and print, per probe, how HTP's codes compare with each candidate model.

/work/venv/bin/python scripts/htp_probe.py [--arch 73] [--only ties,multiplier,...] [--no-examples]
"""

from __future__ import annotations

import argparse
import time

from qdiverge.probes import bias, conv, eltwise, fusion, inputs, lut, rescale

PROBES = {
    "ties": conv.probe_conv_ties,
    "multiplier": conv.probe_multiplier,
    "prescale": conv.probe_prescale,
    "bias": conv.probe_bias,
    "biastensor": bias.probe_bias_tensor,
    "depthwise": conv.probe_depthwise,
    "lut": lut.probe_luts,
    "lut16": lut.probe_luts16,
    "eltwise": eltwise.probe_eltwise,
    "rescale": rescale.probe_rescale,
    "fusion": fusion.probe_fusion,
    "input": inputs.probe_input_quant,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=73)
    parser.add_argument("--only", default=",".join(PROBES), help="comma-separated probe names")
    parser.add_argument("--no-examples", action="store_true")
    args = parser.parse_args()
    for name in args.only.split(","):
        start = time.perf_counter()
        for result in PROBES[name](args.arch):
            print(result.report(examples=not args.no_examples))
        print(f"# {name}: {time.perf_counter() - start:.1f}s on htp_arch {args.arch}\n")


if __name__ == "__main__":
    main()
