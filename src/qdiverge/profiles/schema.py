"""Target profiles: every arithmetic choice of a target named as data.

Kernels branch on these fields, never on a profile's name. Profiles are YAML files validated into
these frozen dataclasses by ``qdiverge.profiles.load``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ROUNDINGS = ("half_up", "half_away", "half_even", "floor", "trunc")
MULTIPLIERS = ("q31", "q31_unnormalized", "q15", "q15_truncated", "q12_prescaled", "float32", "float64")
# non-linear activations integer targets evaluate as a table from input code to output code
LUT_ACTIVATIONS = (
    "HardSwish", "HardSigmoid", "Sigmoid", "Tanh", "Erf", "Gelu", "Exp", "Elu", "Softplus", "Sqrt", "Log",
)  # fmt: skip


@dataclass(frozen=True)
class RequantSpec:
    """How an int32 (or int64) value is rescaled to an output encoding.

    ``multiplier``: fixed-point form of the real multiplier M (``q31``: normalised 31-bit mantissa plus
    shift; ``q31_unnormalized``: round(M * 2^31) for M < 1 (Hexagon NN); ``q15``: 15-bit;
    ``q12_prescaled``: HTP 8-bit outputs, the accumulator shifted to the midpoint of a 2^g step and scaled by
    a 12-bit mantissa (``fixed_point.q12_prescale``; wider outputs use ``q31``);
    ``float32``/``float64``: multiply in float (ONNX Runtime style)). ``rounding``: the tie rule.
    ``double_rounding``: gemmlowp SRDHM then rounding shift (two roundings). ``zero_point``: ``after``
    (add z_out after rounding) or ``folded`` (round(z_out / M) added to the accumulator first).
    ``scale_precision``: whether M = s_in * s_w / s_out is formed in float32 or float64.
    ``zero_point_rounding``: tie rule of the folded zero point ``round(z_out / M)`` (``folded`` only).
    """

    multiplier: str = "q31"
    rounding: str = "half_up"
    double_rounding: bool = False
    zero_point: str = "after"
    scale_precision: str = "float64"
    zero_point_rounding: str = "half_even"


@dataclass(frozen=True)
class LutSpec:
    """Non-linear activations as tables from input code to output code."""

    ops: tuple[str, ...] = LUT_ACTIVATIONS
    rounding: str = "half_even"
    compute: str = "float32"  # precision of f(x) when the table is built: float32 | float64


@dataclass(frozen=True)
class Profile:
    """A target's integer arithmetic."""

    name: str
    description: str = ""
    accumulator: str = "wrap"  # int32 overflow: wrap | saturate
    weight_rounding: str = "half_even"  # how the converter turns float weights into codes
    bias_bits: int = 32  # 32: int32 at s_in*s_w; 8: 8-bit symmetric bias re-expressed at s_in*s_w
    bias_rounding: str = "half_even"
    input_rounding: str = "half_even"  # quantizing float graph inputs
    input_reciprocal: bool = True  # x * (1/s) (HTP core) instead of x / s (ONNX)
    input_fp16: bool = False  # HTP 8-bit inputs: x * (1/s) rounded to float16 first, zero point added after
    conv: RequantSpec = field(default_factory=RequantSpec)  # Conv, ConvTranspose, Gemm, MatMul
    eltwise: RequantSpec = field(default_factory=RequantSpec)  # Add, Sub, Mul, Div
    eltwise_left_shift: int = 20  # headroom bits before rescaling add inputs (TFLite: 20 for 8 bit)
    rescale: RequantSpec = field(default_factory=RequantSpec)  # Concat inputs, pooling, Resize, Relu/Clip
    eltwise_method: str = "tflite"  # Add/Sub: tflite (3 Q multipliers) | hexagon_nn (14-bit) | float (ORT)
    concat_method: str = "requant"  # inputs to the output encoding: requant (rescale spec) | lut | hexagon_nn
    # AveragePool/GlobalAveragePool/ReduceMean: requant | tflite | hexagon_nn | float
    pool_method: str = "requant"
    resize_method: str = "q10"  # bilinear Resize: q10 (TFLite 10-bit weights) | exact (rational weights)
    lut: LutSpec = field(default_factory=LutSpec)
    fusions: tuple[tuple[str, ...], ...] = (("Conv", "Relu"), ("Conv", "Clip"))
    # activations NOT fused after a depthwise conv with stride > 1 (HTP requantizes the conv output there)
    unfused_after_strided_depthwise: tuple[str, ...] = ()
    derive_missing: str = "minmax"  # how a tensor the target needs but the export lacks is encoded
    notes: tuple[str, ...] = ()
