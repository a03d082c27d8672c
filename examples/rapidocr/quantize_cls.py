"""Quantize RapidOCR's text-direction classifier with aimet-onnx, the way users report doing it.

Takes ``ch_ppocr_mobile_v2.0_cls_infer.onnx`` out of a downloaded ``rapidocr_onnxruntime`` wheel, fixes
its dynamic batch/width to 1x3x48x192, folds BatchNorm, quantizes it under the per-tensor config users
report (examples/mobilenetv3's: symmetric per-tensor weights, unsigned_symmetric, float bias,
Conv+HardSwish supergroup), calibrates on seeded random data and exports ``model.onnx`` + ``model.data``
+ ``model.encodings`` (1.0.0) into the work directory. Needs torch + aimet-onnx.

    python quantize_cls.py WORK_DIR
"""

from __future__ import annotations

import json
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "scripts"))

import make_aimet_fixtures as fx  # noqa: E402  (the same AIMET helpers the test fixtures use)

MODEL_NAME = "ch_ppocr_mobile_v2.0_cls_infer.onnx"
INPUT_SHAPE = (1, 3, 48, 192)
SEED = 7


def extract_model(work: Path) -> Path:
    """Copy the classifier out of the single rapidocr_onnxruntime wheel in ``work``."""
    wheels = sorted(work.glob("rapidocr_onnxruntime-*.whl"))
    if not wheels:
        raise SystemExit(f"{work}: no rapidocr_onnxruntime wheel; run run_rapidocr.sh")
    with zipfile.ZipFile(wheels[-1]) as wheel:
        member = next((n for n in wheel.namelist() if n.endswith("/" + MODEL_NAME)), None)
        if member is None:
            raise SystemExit(f"{wheels[-1].name}: no {MODEL_NAME} inside")
        target = work / MODEL_NAME
        target.write_bytes(wheel.read(member))
    return target


def fix_input_shape(model: onnx.ModelProto) -> onnx.ModelProto:
    """Pin the graph input to ``INPUT_SHAPE`` and re-infer shapes (AIMET and qdiverge need static shapes)."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim, value in zip(dims, INPUT_SHAPE, strict=True):
        dim.ClearField("dim_param")
        dim.dim_value = value
    for output in model.graph.output:
        for dim in output.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.ClearField("dim_param")
    del model.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model)


def main() -> None:
    from aimet_onnx.batch_norm_fold import fold_all_batch_norms_to_weight

    work = Path(sys.argv[1]).resolve()
    start = time.perf_counter()
    source = extract_model(work)
    model = fix_input_shape(onnx.load(str(source)))
    input_name = model.graph.input[0].name
    folded = fold_all_batch_norms_to_weight(model)[0]
    config_path = work / "quantsim_config.json"
    config_path.write_text(json.dumps(fx.user_per_tensor_config(), indent=2) + "\n")
    rng = np.random.default_rng(SEED)
    calibration = [rng.uniform(-1.0, 1.0, INPUT_SHAPE).astype(np.float32) for _ in range(4)]
    sim = fx.quantize(model, config_path, calibration, input_name)
    fx.export(sim, work, versions=("1.0.0",))
    print(
        f"{source.name}: {source.stat().st_size} bytes, {len(model.graph.node)} nodes after folding"
        f" {len(folded)} BatchNorms; quantized and exported to {work} in {time.perf_counter() - start:.1f}s"
    )


if __name__ == "__main__":
    main()
