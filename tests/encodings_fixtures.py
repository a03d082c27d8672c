"""Hand-written encodings for ``onnx_builders.small_net``, writers for the three AIMET JSON versions, and
``encoding_fields`` to compare what the reader made of them.

The writers follow the format notes (offset = unsigned-domain, 2.0.0 zero point = qmin - offset);
they are test-side code, independent of the reader under test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# name -> (bitwidth, signed, scales, unsigned-domain offsets, is_param); scales are float32-exact
SMALL_NET = {
    "input": (8, False, [0.0260009765625], [-136], False),
    "conv1.weight": (8, True, [1 / 256, 3 / 512, 5 / 1024, 7 / 2048], [-128] * 4, True),
    "relu1_out": (8, False, [0.0625], [0], False),
    "fc.weight": (8, True, [1 / 64, 1 / 128], [-128] * 2, True),
    "fc_out": (8, False, [0.03125], [-77], False),
    "addconst": (8, False, [1 / 128], [-100], False),
    "add_out": (16, False, [1 / 4096], [-30000], False),
}


def v061(encs: dict) -> dict:
    acts, params = {}, {}
    for name, (bw, signed, scales, offsets, is_param) in encs.items():
        chans = [
            {
                "bitwidth": bw,
                "dtype": "int",
                "is_symmetric": str(signed),
                "scale": s,
                "offset": float(o),
                "min": o * s,
                "max": (o + 2**bw - 1) * s,
            }
            for s, o in zip(scales, offsets, strict=True)
        ]
        (params if is_param else acts)[name] = chans
    return {"version": "0.6.1", "activation_encodings": acts, "param_encodings": params}


def v100(encs: dict) -> dict:
    acts, params = [], []
    for name, (bw, signed, scales, offsets, is_param) in encs.items():
        entry = {
            "name": name,
            "dtype": "INT",
            "bw": bw,
            "is_sym": signed,
            "scale": list(scales),
            "offset": [float(o) for o in offsets],
            "enc_type": "PER_CHANNEL" if len(scales) > 1 else "PER_TENSOR",
        }
        (params if is_param else acts).append(entry)
    return {"version": "1.0.0", "activation_encodings": acts, "param_encodings": params}


def v200(encs: dict, axes: dict | None = None) -> dict:
    entries = []
    for name, (bw, signed, scales, offsets, _) in encs.items():
        qmin = -(2 ** (bw - 1)) if signed else 0
        zps = [qmin - o for o in offsets]
        entry = {"name": name, "output_dtype": f"{'' if signed else 'u'}int{bw}"}
        if len(scales) > 1:
            entry["y_scale"], entry["axis"] = list(scales), (axes or {}).get(name, 0)
            if any(zps):
                entry["y_zero_point"] = zps
        else:
            entry["y_scale"] = scales[0]
            if zps[0]:
                entry["y_zero_point"] = zps[0]
        entries.append(entry)
    return {"version": "2.0.0", "encodings": entries}


def v100_per_block(name: str, scales: list[float], block_size: int) -> dict:
    """A 1.0.0 file with one 4-bit symmetric PER_BLOCK param entry (``scales`` flat, channel-major)."""
    entry = {
        "name": name,
        "bw": 4,
        "dtype": "INT",
        "enc_type": "PER_BLOCK",
        "is_sym": True,
        "block_size": block_size,
        "scale": list(scales),
        "offset": [-8.0] * len(scales),
    }
    return {"version": "1.0.0", "activation_encodings": [], "param_encodings": [entry]}


def encoding_fields(encset: Any) -> dict[str, dict[str, tuple]]:
    """Every field of every encoding of an ``EncodingSet``, by kind and tensor name."""
    return {
        kind: {
            n: (
                e.bitwidth,
                e.signed,
                e.dtype,
                e.scale.tolist(),
                e.offset.tolist(),
                e.axis,
                e.block_axis,
                e.block_size,
            )
            for n, e in getattr(encset, kind).items()
        }
        for kind in ("activations", "params", "int32_bias", "derived")
    }


def write(data: dict | str, folder: Path, name: str = "model.encodings") -> Path:
    path = folder / name
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=1))
    return path
