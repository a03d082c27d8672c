"""``qdiverge run``: one engine over all samples, outputs stacked along a new first (sample) axis."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qdiverge.fileio import atomic_write
from qdiverge.loading.inputs import InputSource
from qdiverge.pipeline import Workspace


def run_engine(
    ws: Workspace,
    source: InputSource,
    engine: str,
    output: Path,
    dump_all: bool = False,
    integers: bool = False,
    htp_arch: int = 73,
) -> list[str]:
    """Run ``engine`` and write ``output`` (.npz); returns lines describing float-fallback ops."""
    names = list(ws.model.outputs)
    if dump_all:
        encoded = [t for t in ws.encodings.activations if t in ws.model.producer or t in ws.model.inputs]
        names += [t for t in encoded if t not in names]
    collected: dict[str, list[np.ndarray]] = {n: [] for n in names}
    flagged: list[str] = []
    if engine in ("emulate", "htp"):
        emu = ws.htp(source, htp_arch) if engine == "htp" else ws.emulator(source)
        flagged = [_flag_line(entry) for entry in emu.fallback_report()] if engine == "emulate" else []
        for sample in source:
            values = emu.run(sample, keep="all" if dump_all else "outputs")
            for n in names:
                if n in values:  # htp: a tensor it cannot expose is left out
                    collected[n].append(values[n].dequantize())
                    if integers and values[n].encoding is not None:
                        collected.setdefault(f"{n}::codes", []).append(values[n].codes)
    else:
        eng = ws.sim() if engine == "sim" else ws.float()
        capture = names if dump_all else []
        for sample in source:
            values = eng.run(sample, capture=capture)
            for n in names:
                collected[n].append(values[n])
    arrays = {n: np.stack(v) for n, v in collected.items() if v}
    atomic_write(output, lambda fh: np.savez(fh, **arrays))
    return flagged


def _flag_line(entry: dict) -> str:
    """One line per flagged emulator step: what runs in float, or which encodings the target had to derive."""
    what = f"float fallback ({entry['float_fallback']})" if entry["float_fallback"] else ""
    derived = (
        f"derived encoding for {', '.join(entry['derived_encodings'])}" if entry["derived_encodings"] else ""
    )
    return f"{entry['step']} [{entry['ops']}]: " + "; ".join(x for x in (what, derived) if x)
