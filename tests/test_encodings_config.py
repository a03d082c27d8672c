"""AIMET quantsim config parsing and supergroup matching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from onnx_builders import GraphBuilder, conv_act_model, save

from qdiverge.encodings.config import read_quantsim_config, supergroup_internal_tensors
from qdiverge.errors import InputError
from qdiverge.loading.model import load_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "aimet"


def test_shipped_default_per_channel_config():
    cfg = read_quantsim_config(CONFIGS / "default_config_per_channel.json")
    assert cfg.defaults_ops.is_output_quantized is True and cfg.defaults_params.is_symmetric is True
    assert cfg.params["bias"].is_quantized is False
    assert all(cfg.per_channel_for(op) for op in ("Conv", "ConvTranspose", "Gemm", "MatMul"))
    assert not cfg.per_channel_for("Add")
    assert ("Conv", "Relu") in cfg.supergroups and cfg.supergroup_pass_list == ("MatmulAdd",)
    assert cfg.model_input_quantized is True and cfg.model_output_quantized is None


def test_shipped_htp_v73_config():
    cfg = read_quantsim_config(CONFIGS / "htp_quantsim_config_v73.json")
    assert cfg.hw_version == "V73" and not cfg.per_channel_quantization and not cfg.strict_symmetric
    assert cfg.per_channel_for("Conv") and not cfg.per_channel_for("Relu")
    assert cfg.op_type["Relu"].encoding_constraints == (0.0, None)
    assert cfg.op_type["Tanh"].encoding_constraints == (-1.0, 1.0)
    assert cfg.op_type["GroupNormalization"].params["bias"].is_quantized is True
    assert ("Conv", "BatchNormalization", "HardSwish") in cfg.supergroups
    assert "LayerNormalization" in cfg.supergroup_pass_list


def _config(tmp_path, **sections):
    data = json.loads((CONFIGS / "default_config_per_channel.json").read_text())
    data.update(sections)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("sections", "needle"),
    [
        (
            {"defaults": {"ops": {"is_output_quantised": "True"}, "params": {}}},
            "defaults.ops.is_output_quantised",
        ),
        (
            {"defaults": {"ops": {"is_output_quantized": True}, "params": {}}},
            'defaults.ops.is_output_quantized: expected the string "True"',
        ),
        ({"op_type": {"Conv": {"per_channel_quantization": "yes"}}}, "op_type.Conv.per_channel_quantization"),
        (
            {"op_type": {"Relu": {"encoding_constraints": {"max": 1}}}},
            "op_type.Relu.encoding_constraints.min",
        ),
        ({"supergroups": [{"op_list": ["Conv"]}]}, "supergroups[0].op_list: needs at least two"),
        ({"supergroup_pass_list": ["Fancy"]}, "unknown graph pass 'Fancy'"),
        ({"model_input": {"is_input_quantized": "TRUE"}}, "model_input.is_input_quantized"),
        ({"extra_section": {}}, "config.extra_section: unknown key"),
        ({"params": {"weight": {"bitwidth": 8}}}, "params.weight.bitwidth: unknown key"),
    ],
)
def test_bad_config_names_the_key(tmp_path, sections, needle):
    with pytest.raises(InputError) as info:
        read_quantsim_config(_config(tmp_path, **sections))
    assert needle in str(info.value) and "config.json" in str(info.value)


def test_missing_section_and_file(tmp_path):
    path = _config(tmp_path)
    data = json.loads(path.read_text())
    del data["supergroups"]
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="supergroups: required section is missing"):
        read_quantsim_config(path)
    with pytest.raises(InputError, match="not found"):
        read_quantsim_config(tmp_path / "none.json")


def _hardswish_config(tmp_path, passes=()):
    return read_quantsim_config(
        _config(
            tmp_path,
            supergroups=[{"op_list": ["Conv", "HardSwish"]}, {"op_list": ["Conv", "HardSwish", "Add"]}],
            supergroup_pass_list=list(passes),
        )
    )


def test_conv_hardswish_is_a_supergroup(tmp_path):
    model = load_model(save(conv_act_model(act="HardSwish"), tmp_path))
    assert supergroup_internal_tensors(_hardswish_config(tmp_path), model) == {"conv_out": ("conv", "act")}


def test_depthwise_conv_is_excluded(tmp_path):
    model = load_model(save(conv_act_model(cin=4, cout=4, group=4, act="HardSwish"), tmp_path))
    assert supergroup_internal_tensors(_hardswish_config(tmp_path), model) == {}
    grouped = load_model(save(conv_act_model(cin=4, cout=4, group=2, act="HardSwish"), tmp_path, "g.onnx"))
    assert supergroup_internal_tensors(_hardswish_config(tmp_path), grouped) == {"conv_out": ("conv", "act")}


def test_branches_break_a_chain_and_longest_pattern_wins(tmp_path):
    g = GraphBuilder()
    x = g.input("input", (1, 3, 8, 8))
    a = g.act("HardSwish", g.conv(x, "c1", 3, 3), "h1")
    g.output(g.add(a, x, "add"))  # Conv -> HardSwish -> Add: the three-op pattern
    c2 = g.conv(x, "c2", 3, 3)
    g.output(g.act("HardSwish", c2, "h2"))
    g.output(c2)  # c2_out is also a graph output but has one consumer op: matched
    c3 = g.conv(x, "c3", 3, 3)
    g.output(g.act("HardSwish", c3, "h3"))
    g.output(g.act("Relu", c3, "r3"))  # c3_out has two consumers: no match
    model = load_model(save(g.build(), tmp_path))
    internal = supergroup_internal_tensors(_hardswish_config(tmp_path), model)
    assert internal == {"c1_out": ("c1", "h1", "add"), "h1_out": ("c1", "h1", "add"), "c2_out": ("c2", "h2")}


def test_matmul_add_pass(tmp_path):
    g = GraphBuilder()
    x = g.matmul(g.input("input", (1, 8)), "mm", 8, 4)
    g.output(g.add(x, g.weight("b", (4,)), "add"))
    model = load_model(save(g.build(), tmp_path))
    assert supergroup_internal_tensors(_hardswish_config(tmp_path, ["MatmulAdd"]), model) == {
        "mm_out": ("mm", "add")
    }
    assert supergroup_internal_tensors(_hardswish_config(tmp_path), model) == {}
