"""Detectors (qdiverge.diagnosis): each fires on a crafted model with hand-computed numbers and stays
silent on its fixed twin; what-if transformations checked exactly (against AIMET's own export where
one exists)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from onnx_builders import GraphBuilder, save

from qdiverge.diagnosis import CheckContext, attach, run_checks
from qdiverge.diagnosis.whatif import bias_bits, override_encoding, parse_what_if, per_channel
from qdiverge.encodings.load import load_encodings
from qdiverge.encodings.schema import Encoding, EncodingSet, make_encoding
from qdiverge.errors import InputError
from qdiverge.loading.model import Model, load_model
from qdiverge.profiles.schema import LutSpec, Profile, RequantSpec

FIXTURES = Path(__file__).parent / "fixtures" / "aimet"
EPS = float(np.finfo(np.float32).eps)


def u8(name: str, scale: float, offset: float = -128.0) -> Encoding:
    """Unsigned 8-bit asymmetric activation encoding."""
    return make_encoding(name, 8, scale, offset)


def s8(name: str, scale, offset=-128.0, **kw) -> Encoding:
    """Signed symmetric 8-bit weight encoding (per channel when ``scale`` is a list; axis 0 by default)."""
    per_channel = np.size(scale) > 1
    return make_encoding(
        name,
        8,
        scale,
        offset,
        signed=True,
        symmetric=True,
        is_param=True,
        axis=kw.pop("axis", 0) if per_channel else None,
        **kw,
    )


def load(tmp_path: Path, g: GraphBuilder) -> Model:
    return load_model(save(g.build(), tmp_path))


def ctx_for(model: Model, acts=(), params=(), int32=(), profile: Profile | None = None, **kw) -> CheckContext:
    encs = EncodingSet(
        "test",
        "1.0.0",
        activations={e.name: e for e in acts},
        params={e.name: e for e in params},
        int32_bias={e.name: e for e in int32},
    )
    return CheckContext(model, encs, profile or Profile(name="t"), **kw)


def only(ctx: CheckContext, rule: str) -> list:
    return run_checks(ctx, [rule])


def conv1x1(tmp_path: Path, w: np.ndarray, b: np.ndarray | None = None, act: str | None = None) -> Model:
    """input[1,cin,4,4] -> Conv(1x1 weight w, bias b) [-> act] -> output."""
    g = GraphBuilder()
    x = g.input("input", (1, w.shape[1], 4, 4))
    inputs = [x, g.const("w", w.astype(np.float32))]
    if b is not None:
        inputs.append(g.const("b", b.astype(np.float32)))
    y = g.op("Conv", inputs, "conv_out", "conv")
    if act:
        y = g.act(act, y, "act")
    g.output(y)
    return load(tmp_path, g)


# ---- per-tensor-weight-collapse ------------------------------------------------------------------


def depthwise(tmp_path: Path) -> tuple[Model, np.ndarray]:
    ramp = np.linspace(-1.0, 1.0, 9)
    w = np.stack([ramp, 0.3 * ramp, [0.02, -0.02, 0.01, 0, 0, 0, 0, 0, 0], np.full(9, 0.0004)])
    w = w.reshape(4, 1, 3, 3).astype(np.float32)
    g = GraphBuilder()
    y = g.op(
        "Conv",
        [g.input("input", (1, 4, 8, 8)), g.const("dw.weight", w)],
        "dw_out",
        "dw",
        group=4,
        pads=[1, 1, 1, 1],
    )
    g.output(y)
    return load(tmp_path, g), w


def test_weight_collapse_counts_collapsed_and_dead_channels(tmp_path):
    model, _ = depthwise(tmp_path)
    # per-tensor scale 1/127: LSB 0.00787, 4 LSB = 0.0315. Channel 2 (max 0.02) keeps codes {3,-3,1,0};
    # channel 3 (max 0.0004 = 0.05 LSB) rounds to all zeros
    ctx = ctx_for(model, acts=[u8("input", 0.05), u8("dw_out", 0.05)], params=[s8("dw.weight", 1 / 127)])
    [f] = only(ctx, "per-tensor-weight-collapse")
    assert f.severity == "error"
    n = f.numbers
    counts = (n["channels"], n["collapsed"], n["dead"], n["worst_channel"], n["worst_channel_levels"])
    assert counts == (4, 2, 1, 3, 1)
    assert n["depthwise"] == 1 and n["node"] == "dw" and n["tensor"] == "dw.weight"
    assert "per-channel=dw" in f.fix


def test_weight_collapse_silent_with_per_channel_weights(tmp_path):
    model, w = depthwise(tmp_path)
    scales = list(np.abs(w).reshape(4, -1).max(axis=1) / 127)
    ctx = ctx_for(model, acts=[u8("input", 0.05), u8("dw_out", 0.05)], params=[s8("dw.weight", scales)])
    assert only(ctx, "per-tensor-weight-collapse") == []


# ---- bias ----------------------------------------------------------------------------------------


def test_bias_int32_saturation_on_dead_channel(tmp_path):
    # dsp_arithmetic.md §7.5: weight scale 1.19e-7 (dead channel), s_in = 0.01 -> bias limit 2.56
    model = conv1x1(tmp_path, np.array([[0.5], [0.0]]).reshape(2, 1, 1, 1), np.array([0.5, 5.0]))
    ctx = ctx_for(model, acts=[u8("input", 0.01), u8("conv_out", 0.05)], params=[s8("w", [0.5 / 127, EPS])])
    [f] = only(ctx, "bias-int32-saturation")
    limit = (2**31 - 1) * 0.01 * EPS
    assert f.severity == "error"
    assert f.numbers["saturated"] == 1 and f.numbers["worst_channel"] == 1
    assert f.numbers["representable"] == pytest.approx(limit, rel=1e-6)
    assert f.numbers["error"] == pytest.approx(5.0 - limit, rel=1e-6)
    assert f.numbers["error_lsb"] == pytest.approx((5.0 - limit) / 0.05, rel=1e-6)


def test_bias_int32_saturation_silent_within_range(tmp_path):
    model = conv1x1(tmp_path, np.array([[0.5], [0.0]]).reshape(2, 1, 1, 1), np.array([0.5, 2.0]))
    ctx = ctx_for(model, acts=[u8("input", 0.01), u8("conv_out", 0.05)], params=[s8("w", [0.5 / 127, EPS])])
    assert only(ctx, "bias-int32-saturation") == []


def bias8_context(tmp_path: Path, bits: int) -> CheckContext:
    bias = np.array([0.0123, -0.5, 1.7, 0.0004])
    model = conv1x1(tmp_path, np.full((4, 1, 1, 1), 0.1), bias)
    profile = Profile(name="t", bias_bits=bits, bias_rounding="half_even")
    return ctx_for(
        model, acts=[u8("input", 0.01), u8("conv_out", 0.005)], params=[s8("w", [0.001] * 4)], profile=profile
    )


def test_bias_precision_8bit_bias(tmp_path):
    # the worked example of dsp_arithmetic.md §7.5: s_b = 1.7/127, -0.5 -> -37 * s_b, 0.94 LSB at s_out 0.005
    [f] = only(bias8_context(tmp_path, 8), "bias-precision")
    b = np.array([0.0123, -0.5, 1.7, 0.0004])
    s_b = 1.7 / 127
    acc = 0.01 * 0.001
    target = np.rint(np.rint(b / s_b) * s_b / acc) * acc
    lsb = np.abs(target - b) / 0.005
    assert f.severity == "warning"
    assert f.numbers["worst_channel"] == 1 and f.numbers["bias_bits"] == 8
    assert f.numbers["worst_lsb"] == pytest.approx(lsb[1], rel=1e-5)
    assert f.numbers["worst_lsb"] == pytest.approx(0.94, abs=0.01)
    assert f.numbers["channels_over"] == 1 and "bias-bits=32" in f.fix


def test_bias_precision_silent_with_int32_bias(tmp_path):
    assert only(bias8_context(tmp_path, 32), "bias-precision") == []


# ---- requant-multiplier --------------------------------------------------------------------------


def requant_context(tmp_path: Path, s_in: float, s_w: float, s_out: float, spec: RequantSpec) -> CheckContext:
    model = conv1x1(tmp_path, np.full((1, 1, 1, 1), 0.3))
    return ctx_for(
        model,
        acts=[u8("input", s_in), u8("conv_out", s_out)],
        params=[s8("w", s_w)],
        profile=Profile(name="t", conv=spec),
    )


def test_requant_multiplier_flushes_below_2_pow_minus_31(tmp_path):
    ctx = requant_context(tmp_path, 1e-4, 1e-6, 100.0, RequantSpec(multiplier="q31"))  # M = 1e-12
    [f] = only(ctx, "requant-multiplier")
    assert f.severity == "error" and f.numbers["flushed"] == 1 and "flushes to 0" in f.message
    assert f.numbers["multiplier"] == pytest.approx(1e-12)


def test_requant_multiplier_q15_precision(tmp_path):
    # M = 1.5 * 2^-16: the 15-bit gain round(M * 2^15) = round(0.75) = 1 gives 2^-15, i.e. 4/3 of M.
    # Output code c comes out as min(round(4c/3), 255); the worst is c = 191 -> 255, 64 LSB off.
    ctx = requant_context(tmp_path, 1.5 * 2**-8, 2**-8, 1.0, RequantSpec(multiplier="q15"))
    [f] = only(ctx, "requant-multiplier")
    assert f.severity == "error" and "too few bits" in f.message
    assert f.numbers["max_error_lsb"] == pytest.approx(64.0, abs=1e-3)


def test_requant_multiplier_wrapping_left_shift(tmp_path):
    # M = 2 on Hexagon NN: recip 2^30 with a left shift of 2; acc = 2^29 shifts to 2^31, which wraps to
    # -2^31 and comes out as -255 where 255 was due (510 LSB)
    ctx = requant_context(tmp_path, 0.5, 0.5, 0.125, RequantSpec(multiplier="q31_unnormalized"))
    [f] = only(ctx, "requant-multiplier")
    assert "wraps" in f.message and f.numbers["max_error_lsb"] == 510.0
    assert f.numbers["multiplier"] == 2.0


def test_requant_multiplier_degenerate_output_scale(tmp_path):
    ctx = requant_context(tmp_path, 0.5, 0.5, EPS, RequantSpec(multiplier="q15"))  # M = 2^21
    [f] = only(ctx, "requant-multiplier")
    assert f.severity == "error" and f.numbers["multiplier"] == 2.0**21 and "degenerate" in f.message


def test_requant_multiplier_silent_for_ordinary_scales(tmp_path):
    for form in ("q31", "q31_unnormalized", "float32"):
        ctx = requant_context(tmp_path, 0.0213, 0.00412, 0.0617, RequantSpec(multiplier=form))
        assert only(ctx, "requant-multiplier") == []


# ---- missing-target-encoding / sim-only-quantizer ------------------------------------------------


def conv_hswish_context(tmp_path: Path, profile: Profile, **kw) -> CheckContext:
    model = conv1x1(tmp_path, np.full((2, 1, 1, 1), 0.3), act="HardSwish")
    return ctx_for(
        model,
        acts=[u8("input", 0.02), u8("act_out", 0.03)],
        params=[s8("w", 0.3 / 127)],
        profile=profile,
        **kw,
    )


def test_missing_target_encoding_inside_unfused_supergroup(tmp_path):
    observed = {"conv_out": (-1.0, 2.0, 0.0)}
    [f] = only(conv_hswish_context(tmp_path, Profile(name="t"), observed=observed), "missing-target-encoding")
    assert f.severity == "error" and f.numbers["chain"] == "Conv+HardSwish"
    assert f.numbers["tensor"] == "conv_out" and f.numbers["node"] == "conv"
    # minmax derivation (QNN tf) of [-1, 2]: scale 3/255, offset round(-1 / (3/255)) = -85
    assert f.numbers["derived_scale"] == pytest.approx(3 / 255) and f.numbers["derived_offset"] == -85


def test_missing_target_encoding_silent_when_target_fuses(tmp_path):
    profile = Profile(name="t", fusions=(("Conv", "HardSwish"),))
    assert only(conv_hswish_context(tmp_path, profile), "missing-target-encoding") == []


def test_missing_target_encoding_for_unencoded_compute_output(tmp_path):
    g = GraphBuilder()
    x = g.input("input", (1, 1, 4, 4))
    y = g.op("Conv", [x, g.const("w", np.full((1, 1, 1, 1), 0.3, np.float32))], "conv_out", "conv")
    g.output(g.add(y, x, "add"))
    acts = [u8("input", 0.02), u8("add_out", 0.03)]
    ctx = ctx_for(load(tmp_path, g), acts=acts, params=[s8("w", 0.3 / 127)])
    [f] = only(ctx, "missing-target-encoding")
    assert f.severity == "warning" and "chain" not in f.numbers and f.numbers["tensor"] == "conv_out"


def test_missing_target_encoding_silent_when_encoding_follows_data_movement(tmp_path):
    g = GraphBuilder()
    y = g.op(
        "Conv",
        [g.input("input", (1, 1, 4, 4)), g.const("w", np.full((1, 1, 1, 1), 0.3, np.float32))],
        "conv_out",
        "conv",
    )
    g.output(g.reshape(y, "flat", (1, 16)))
    acts = [u8("input", 0.02), u8("flat_out", 0.03)]
    ctx = ctx_for(load(tmp_path, g), acts=acts, params=[s8("w", 0.3 / 127)])
    assert only(ctx, "missing-target-encoding") == []


def test_missing_target_encoding_follows_the_quantsim_config(tmp_path):
    # mbv3_pt_user: AIMET's Conv+HardSwish supergroup left two Conv outputs without quantizers
    from qdiverge.encodings.config import read_quantsim_config

    model = load_model(FIXTURES / "mbv3_pt_user" / "model.onnx")
    model, encs, _ = load_encodings(FIXTURES / "mbv3_pt_user" / "model.encodings", model)
    config = read_quantsim_config(FIXTURES / "mbv3_pt_user" / "quantsim_config.json")
    found = run_checks(CheckContext(model, encs, Profile(name="t"), config), ["missing-target-encoding"])
    assert [(f.numbers["node"], f.numbers["chain"], f.severity) for f in found] == [
        ("/stem/stem.0/stem.0.0/Conv", "Conv+HardSwish", "error"),
        ("/blocks/blocks.1/expand/expand.0/expand.0.0/Conv", "Conv+HardSwish", "error"),
    ]
    fused = Profile(name="t", fusions=(("Conv", "Relu"), ("Conv", "HardSwish")))
    assert run_checks(CheckContext(model, encs, fused, config), ["missing-target-encoding"]) == []


def conv_relu_context(tmp_path: Path, relu_enc: Encoding) -> CheckContext:
    model = conv1x1(tmp_path, np.full((2, 1, 1, 1), 0.3), act="Relu")
    acts = [u8("input", 0.02), u8("conv_out", 0.1), relu_enc]
    return ctx_for(model, acts=acts, params=[s8("w", 0.3 / 127)])


def test_sim_only_quantizer_when_target_fuses_conv_relu(tmp_path):
    [f] = only(conv_relu_context(tmp_path, u8("act_out", 0.05, 0.0)), "sim-only-quantizer")
    assert f.severity == "warning" and f.numbers["tensor"] == "conv_out"
    assert f.numbers["extra_rounding_lsb"] == pytest.approx(0.5 * 0.1 / 0.05)


def test_sim_only_quantizer_silent_for_tied_relu_encoding(tmp_path):
    # AIMET ties a Relu output to its input: Q(relu(Q(x))) == Q(relu(x)) on one grid, nothing to report
    assert only(conv_relu_context(tmp_path, u8("act_out", 0.1)), "sim-only-quantizer") == []


# ---- activation-range ----------------------------------------------------------------------------


def two_input_add(tmp_path: Path) -> Model:
    g = GraphBuilder()
    g.output(g.add(g.input("a", (1, 4)), g.input("b", (1, 4)), "add"))
    return load(tmp_path, g)


def test_activation_range_degenerate_tiny_and_clipped(tmp_path):
    model = two_input_add(tmp_path)
    acts = [u8("a", EPS, 0.0), u8("b", 0.005 / 255, -128.0), u8("add_out", 0.02)]
    observed = {"add_out": (-4.0, 3.0, 0.05), "b": (0.0, 0.001, 0.2)}
    found = only(ctx_for(model, acts=acts, observed=observed), "activation-range")
    got = sorted((f.numbers["tensor"], f.severity) for f in found)
    assert got == [("a", "warning"), ("add_out", "warning"), ("b", "error"), ("b", "info")]
    clip = next(f for f in found if f.numbers["tensor"] == "add_out")
    assert clip.numbers["fraction_clipped"] == 0.05 and clip.numbers["encoding_min"] == pytest.approx(-2.56)


def test_activation_range_silent_for_sane_encodings(tmp_path):
    acts = [u8("a", 0.02), u8("b", 0.02), u8("add_out", 0.03)]
    observed = {"a": (-2.0, 2.0, 0.0), "add_out": (-3.0, 3.0, 0.001)}
    assert only(ctx_for(two_input_add(tmp_path), acts=acts, observed=observed), "activation-range") == []


# ---- rescale-mismatch ----------------------------------------------------------------------------


def test_rescale_mismatch_reports_ratio(tmp_path):
    acts = [u8("a", 0.1), u8("b", 0.01), u8("add_out", 0.1)]
    [f] = only(ctx_for(two_input_add(tmp_path), acts=acts), "rescale-mismatch")
    assert f.numbers["ratio"] == pytest.approx(10.0) and f.numbers["fine_input"] == "b"
    assert f.numbers["bits_lost"] == pytest.approx(np.log2(10.0), rel=1e-6)


def test_rescale_mismatch_silent_below_ratio(tmp_path):
    acts = [u8("a", 0.1), u8("b", 0.05), u8("add_out", 0.1)]
    assert only(ctx_for(two_input_add(tmp_path), acts=acts), "rescale-mismatch") == []


# ---- lut-gap -------------------------------------------------------------------------------------


def hardsigmoid_context(tmp_path: Path, rounding: str) -> CheckContext:
    g = GraphBuilder()
    g.output(g.op("HardSigmoid", [g.input("x", (1, 16))], "hs_out", "hs", alpha=0.25, beta=0.5))
    profile = Profile(name="t", lut=LutSpec(rounding=rounding, compute="float32"))
    return ctx_for(load(tmp_path, g), acts=[u8("x", 1 / 8), u8("hs_out", 1 / 16, 0.0)], profile=profile)


def test_lut_gap_counts_tie_codes(tmp_path):
    # x = k/8, f = k/32 + 0.5, f / (1/16) = k/2 + 8: a tie for every odd k in (-16, 16). The sim rounds
    # ties up, a half-even table rounds down when floor is even: k = 1 mod 4, 8 codes, 1 LSB each.
    [f] = only(hardsigmoid_context(tmp_path, "half_even"), "lut-gap")
    assert f.severity == "info"
    n = f.numbers
    assert (n["codes"], n["codes_differ"], n["max_diff_lsb"], n["codes_over_exact"]) == (256, 8, 1, 0)
    assert n["max_exact_gap_lsb"] == 0.5


def test_lut_gap_silent_when_table_rounds_like_the_sim(tmp_path):
    assert only(hardsigmoid_context(tmp_path, "half_away"), "lut-gap") == []


# ---- weight-symmetry / encoding-rederived --------------------------------------------------------


def test_weight_symmetry_per_channel_and_per_tensor(tmp_path):
    model = conv1x1(tmp_path, np.full((2, 1, 1, 1), 0.3))
    asym_pc = make_encoding("w", 8, [0.002, 0.003], [-100.0, -120.0], axis=0, is_param=True)
    [f] = only(ctx_for(model, acts=[u8("input", 0.02)], params=[asym_pc]), "weight-symmetry")
    assert f.severity == "error" and f.numbers["nonzero_zero_points"] == 2 and f.numbers["unsigned"] == 1
    asym_pt = make_encoding("w", 8, 0.002, -100.0, is_param=True)
    [f] = only(ctx_for(model, acts=[u8("input", 0.02)], params=[asym_pt]), "weight-symmetry")
    assert f.severity == "warning" and f.numbers["zero_point"] == 100


def test_weight_symmetry_silent_for_symmetric_weights(tmp_path):
    model = conv1x1(tmp_path, np.full((2, 1, 1, 1), 0.3))
    ctx = ctx_for(model, acts=[u8("input", 0.02)], params=[s8("w", [0.002, 0.003])])
    assert only(ctx, "weight-symmetry") == []


def int32_bias(scale) -> Encoding:
    return make_encoding("b", 32, scale, -(2.0**31), signed=True, symmetric=True, axis=0, is_param=True)


def test_encoding_rederived_strict_symmetric_and_int32_bias_scale(tmp_path):
    model = conv1x1(tmp_path, np.full((2, 1, 1, 1), 0.3), np.array([0.1, 0.2]))
    strict = make_encoding("conv_out", 8, 0.01, -127.0, signed=True, symmetric=True)
    ctx = ctx_for(
        model,
        acts=[u8("input", 0.02), strict],
        params=[s8("w", [0.002, 0.003])],
        int32=[int32_bias([2 * 0.02 * 0.002, 0.02 * 0.003])],
    )
    found = only(ctx, "encoding-rederived")
    assert sorted(f.numbers["tensor"] for f in found) == ["b", "conv_out"]
    bias = next(f for f in found if f.numbers["tensor"] == "b")
    assert bias.numbers["worst_ratio"] == pytest.approx(2.0) and bias.numbers["channels_off"] == 1


def test_encoding_rederived_silent_for_analytic_bias_scale(tmp_path):
    model = conv1x1(tmp_path, np.full((2, 1, 1, 1), 0.3), np.array([0.1, 0.2]))
    ctx = ctx_for(
        model,
        acts=[u8("input", 0.02), u8("conv_out", 0.01)],
        params=[s8("w", [0.002, 0.003])],
        int32=[int32_bias([0.02 * 0.002, 0.02 * 0.003])],
    )
    assert only(ctx, "encoding-rederived") == []


def test_encoding_rederived_silent_on_aimet_int32_bias_export():
    # aimet-onnx's 2.0.0 export writes the analytic bias scale s_in * s_w[c] for all ten biases
    model = load_model(FIXTURES / "mbv3_pc_sym" / "model.onnx")
    model, encs, _ = load_encodings(FIXTURES / "mbv3_pc_sym" / "model-2.0.0.encodings", model)
    assert len(encs.int32_bias) == 10
    assert run_checks(CheckContext(model, encs, Profile(name="t")), ["encoding-rederived"]) == []


# ---- run_checks / attach -------------------------------------------------------------------------


def test_run_checks_orders_by_severity_then_node_and_attaches(tmp_path):
    ctx = conv_relu_context(tmp_path, u8("act_out", 0.05, 0.0))
    ctx.encodings.params["w"] = make_encoding("w", 8, 0.002, -100.0, is_param=True)  # asymmetric: warning
    ctx.encodings.activations["conv_out"] = u8("conv_out", EPS, 0.0)  # degenerate: warning
    ctx.encodings.activations["act_out"] = u8("act_out", 1e6, 0.0)  # M = 4e-11 flushes: error
    found = run_checks(ctx)
    assert found[0].rule == "requant-multiplier" and found[0].severity == "error"
    severities = [f.severity for f in found]
    assert severities == sorted(severities, key=["error", "warning", "info"].index)
    assert {f.rule for f in attach(found, "conv_out")} >= {"sim-only-quantizer", "activation-range"}
    assert attach(found, "act") == ()
    assert run_checks(ctx) == found  # deterministic
    with pytest.raises(InputError, match="unknown check"):
        run_checks(ctx, ["no-such-rule"])


# ---- what-if -------------------------------------------------------------------------------------


def test_per_channel_matches_the_formula(tmp_path):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    w[1] = np.abs(w[1])  # all positive: min gated to 0
    w[2] = 0.0  # dead channel: AIMET's minimum scale
    g = GraphBuilder()
    x = g.op("Conv", [g.input("input", (1, 2, 6, 6)), g.const("cw", w)], "c_out", "c")
    y = g.op(
        "Gemm",
        [g.op("Flatten", [x], "f_out", "f"), g.const("gw", rng.standard_normal((144, 3)).astype(np.float32))],
        "g_out",
        "g",
        transB=0,
    )
    g.output(y)
    model = load(tmp_path, g)
    encs = EncodingSet(
        "t",
        "1.0.0",
        activations={"input": u8("input", 0.02)},
        params={"cw": s8("cw", 0.01), "gw": s8("gw", 0.01)},
    )
    new = per_channel(encs, model)
    rows = w.reshape(4, -1).astype(np.float64)
    expected = np.maximum(np.maximum(rows.max(1), 0) / 127, -np.minimum(rows.min(1), 0) / 128)
    expected = np.maximum(expected, EPS).astype(np.float32)
    cw = new.params["cw"]
    assert np.array_equal(cw.scale, expected.astype(np.float64)) and cw.scale[2] == np.float32(EPS)
    assert np.all(cw.offset == -128) and cw.axis == 0 and cw.signed and cw.symmetric
    gw = model.initializers["gw"].astype(np.float64)
    gexp = np.maximum(gw.max(0) / 127, -gw.min(0) / 128).astype(np.float32)
    assert new.params["gw"].axis == 1 and np.array_equal(new.params["gw"].scale, gexp.astype(np.float64))
    assert encs.params["cw"].scale.size == 1  # the input set is untouched
    only_conv = per_channel(encs, model, ["c"])
    assert only_conv.params["gw"] is encs.params["gw"] and only_conv.params["cw"].scale.size == 4
    with pytest.raises(InputError, match="no node named 'nope'"):
        per_channel(encs, model, ["nope"])
    with pytest.raises(InputError, match="no quantized constant weight"):
        per_channel(encs, model, ["f"])


def test_per_channel_reproduces_aimet_per_channel_export():
    # same float weights exported per-tensor (mbv3_pt_user) and per-channel (mbv3_pc_sym) by aimet-onnx 2.42
    model = load_model(FIXTURES / "mbv3_pt_user" / "model.onnx")
    model, per_tensor, _ = load_encodings(FIXTURES / "mbv3_pt_user" / "model.encodings", model)
    _, aimet_pc, _ = load_encodings(
        FIXTURES / "mbv3_pc_sym" / "model.encodings", load_model(FIXTURES / "mbv3_pc_sym" / "model.onnx")
    )
    derived = per_channel(per_tensor, model)
    assert aimet_pc.params.keys() == derived.params.keys()
    for name, enc in aimet_pc.params.items():
        assert np.array_equal(derived.params[name].scale, enc.scale), name
        assert np.array_equal(derived.params[name].offset, enc.offset), name


def test_per_channel_rederives_int32_bias(tmp_path):
    model = conv1x1(tmp_path, np.array([0.5, -0.25]).reshape(2, 1, 1, 1), np.array([0.1, 0.2]))
    encs = EncodingSet(
        "t",
        "2.0.0",
        activations={"input": u8("input", 0.02)},
        params={"w": s8("w", 0.5 / 127)},
        int32_bias={"b": int32_bias([0.02 * 0.5 / 127] * 2)},
    )
    new = per_channel(encs, model)
    assert np.array_equal(new.int32_bias["b"].scale, 0.02 * new.params["w"].scale)
    assert new.params["w"].scale[1] == np.float32(0.25 / 128)


def test_override_encoding_and_bias_bits(tmp_path):
    encs = EncodingSet(
        "t",
        "1.0.0",
        activations={"a": u8("a", 0.1)},
        params={"w": s8("w", 0.01)},
        derived={"b": u8("b", 0.1)},
    )
    new = override_encoding(encs, "a", -1.0, 2.0)
    assert new.activations["a"].scale[0] == pytest.approx(3 / 255, rel=1e-12)
    assert new.activations["a"].offset[0] == -85
    assert encs.activations["a"].scale[0] == 0.1
    positive = override_encoding(encs, "b", 0.5, 2.0)  # min gated to 0; moves the derived entry
    assert positive.activations["b"].offset[0] == 0
    assert positive.activations["b"].scale[0] == pytest.approx(2 / 255)
    assert "b" not in positive.derived
    for bad in [("w", 0.0, 1.0), ("a", 2.0, 1.0), ("a", float("nan"), 1.0)]:
        with pytest.raises(InputError):
            override_encoding(encs, *bad)
    model = two_input_add(tmp_path)
    with pytest.raises(InputError, match="no tensor 'zz'"):
        override_encoding(encs, "zz", 0.0, 1.0, model=model)
    profile = Profile(name="t")
    assert bias_bits(profile, 8).bias_bits == 8 and profile.bias_bits == 32
    assert bias_bits(profile, 8) == dataclasses.replace(profile, bias_bits=8)
    with pytest.raises(InputError, match="bias-bits=16"):
        bias_bits(profile, 16)


def test_parse_what_if_forms_and_apply(tmp_path):
    assert parse_what_if("per-channel").nodes is None
    assert parse_what_if("per-channel=conv1, conv2").nodes == ("conv1", "conv2")
    assert parse_what_if("bias-bits=8").bits == 8
    spec = parse_what_if("encoding=a:b::t:-1.5,2e0")
    assert (spec.kind, spec.tensor, spec.vmin, spec.vmax) == ("encoding", "a:b::t", -1.5, 2.0)
    model = two_input_add(tmp_path)
    encs = EncodingSet("t", "1.0.0", activations={"a": u8("a", 0.1)})
    new, profile = parse_what_if("encoding=a:-1,2").apply(encs, Profile(name="t"), model)
    assert new.activations["a"].offset[0] == -85 and profile == Profile(name="t")
    _, profile = parse_what_if("bias-bits=8").apply(encs, Profile(name="t"), model)
    assert profile.bias_bits == 8


@pytest.mark.parametrize(
    "spec",
    [
        "per-chanel",
        "per-channel=a,,b",
        "bias-bits=x",
        "bias-bits=16",
        "encoding=t:1",
        "encoding=:1,2",
        "encoding=t:2,1",
        "encoding=t:1,inf",
        "encoding=t",
        "",
    ],
)
def test_parse_what_if_rejects_bad_specs(spec):
    with pytest.raises(InputError, match="--what-if"):
        parse_what_if(spec)
