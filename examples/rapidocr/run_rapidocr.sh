#!/usr/bin/env bash
# RapidOCR's text-direction classifier, quantized with aimet-onnx under the per-tensor config users
# report, then run through qdiverge. Downloads the rapidocr_onnxruntime wheel from PyPI into
# examples/rapidocr/work/ (git-ignored: third-party model, never committed). Needs torch + aimet-onnx
# in the Python environment (pip install .[aimet]).
#
#   examples/rapidocr/run_rapidocr.sh            # PYTHON=/path/to/python to pick the interpreter
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORK="$HERE/work"
PYTHON="${PYTHON:-python}"
QDIVERGE="${QDIVERGE:-$PYTHON -m qdiverge}"
mkdir -p "$WORK"

if ! compgen -G "$WORK/rapidocr_onnxruntime-*.whl" > /dev/null; then
    "$PYTHON" -m pip download rapidocr_onnxruntime --no-deps --only-binary=:all: -d "$WORK"
fi

SECONDS=0
"$PYTHON" "$HERE/quantize_cls.py" "$WORK"
echo "quantized in ${SECONDS}s; files:"
ls -l "$WORK"/model.onnx "$WORK"/model.data "$WORK"/model.encodings 2>/dev/null || true

SECONDS=0
$QDIVERGE check "$WORK/model.onnx" "$WORK/model.encodings" --config "$WORK/quantsim_config.json" \
    --fail-on never --top 15
echo "qdiverge check: ${SECONDS}s"

SECONDS=0
$QDIVERGE bisect "$WORK/model.onnx" "$WORK/model.encodings" --config "$WORK/quantsim_config.json" \
    --samples 8 --seed 0 --top 15 --format json -o "$WORK/bisect.json"
$QDIVERGE bisect "$WORK/model.onnx" "$WORK/model.encodings" --config "$WORK/quantsim_config.json" \
    --samples 8 --seed 0 --top 15
echo "qdiverge bisect (twice: json + table): ${SECONDS}s"
