"""Every unusable encodings file raises InputError with one line naming the file, entry and problem."""

from __future__ import annotations

import copy

import pytest
from encodings_fixtures import SMALL_NET, v061, v100, v100_per_block, v200, write
from onnx_builders import save, small_net

from qdiverge.encodings.aimet import read_encodings_json
from qdiverge.encodings.bind import bind_encodings
from qdiverge.encodings.load import load_encodings
from qdiverge.errors import InputError, UnsupportedError
from qdiverge.loading.model import load_model

BASE = v100({"x": (8, False, [0.5], [-10], False)})


def _entry_with(**changes):
    data = copy.deepcopy(BASE)
    data["activation_encodings"][0].update(changes)
    return data


def _raises(tmp_path, data, *needles, error=InputError):
    path = write(data, tmp_path)
    with pytest.raises(error) as info:
        read_encodings_json(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for needle in needles:
        assert needle in message
    return message


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="encodings file not found"):
        read_encodings_json(tmp_path / "nope.encodings")


def test_malformed_json_names_line_and_column(tmp_path):
    _raises(tmp_path, '{\n  "version": "1.0.0",\n  "activation_encodings": [,]\n}', "line 3 column")


def test_unknown_version(tmp_path):
    _raises(tmp_path, {**BASE, "version": "3.0.0"}, "unknown encodings version '3.0.0'")


def test_not_an_encodings_file(tmp_path):
    _raises(tmp_path, {"hello": 1}, "not an AIMET encodings file")


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"scale": ["0.5"]}, "scale must hold numbers"),
        ({"scale": [float("nan")]}, "scale nan"),
        ({"scale": [float("inf")]}, "scale inf"),
        ({"scale": [0.0]}, "scale 0.0"),
        ({"scale": [-0.5]}, "scale -0.5"),
        ({"scale": []}, "non-empty"),
        ({"bw": 0}, "bitwidth 0 not in 2..32"),
        ({"bw": 1}, "bitwidth 1 not in 2..32"),
        ({"bw": 33}, "bitwidth 33 not in 2..32"),
        ({"bw": "8"}, "bw must be an integer"),
        ({"offset": [5.0]}, "offset 5 is outside"),
        ({"offset": [-256.0]}, "offset -256 is outside"),
        ({"offset": [-3.5]}, "not an integer"),
        ({"is_sym": "yes"}, "is_sym must be"),
        ({"enc_type": "PER_ROW"}, "enc_type 'PER_ROW'"),
        ({"dtype": "FP"}, "dtype must be"),
        ({"scale": [0.5, 0.25]}, "2 scales but 1 offsets"),
    ],
)
def test_bad_100_fields(tmp_path, changes, needle):
    message = _raises(tmp_path, _entry_with(**changes), needle)
    assert "'x'" in message


def test_missing_scale(tmp_path):
    data = copy.deepcopy(BASE)
    del data["activation_encodings"][0]["scale"]
    _raises(tmp_path, data, "'x'", "missing field 'scale'")


def test_duplicated_names(tmp_path):
    data = copy.deepcopy(BASE)
    data["activation_encodings"].append(data["activation_encodings"][0])
    _raises(tmp_path, data, "'x' has more than one encoding")
    both = v100({"x": (8, False, [0.5], [0], False)})
    both["param_encodings"] = copy.deepcopy(both["activation_encodings"])
    _raises(tmp_path, both, "'x' has more than one encoding")


def test_bad_061_entries(tmp_path):
    data = v061({"x": (8, False, [0.5], [-10], False)})
    data["activation_encodings"]["x"] = []
    _raises(tmp_path, data, "'x'", "non-empty list")
    data["activation_encodings"]["x"] = [
        {"bitwidth": 8, "dtype": "int", "is_symmetric": "maybe", "scale": 0.5, "offset": 0}
    ]
    _raises(tmp_path, data, "is_symmetric must be")


def test_bad_200_entries(tmp_path):
    _raises(
        tmp_path,
        {"version": "2.0.0", "encodings": [{"name": "x", "output_dtype": "int8", "y_scale": []}]},
        "'x'",
        "empty",
    )
    _raises(
        tmp_path,
        {"version": "2.0.0", "encodings": [{"name": "x", "output_dtype": "qint8", "y_scale": 1}]},
        "output_dtype",
    )
    _raises(
        tmp_path,
        {
            "version": "2.0.0",
            "encodings": [{"name": "x", "output_dtype": "uint8", "y_scale": 1.0, "y_zero_point": 300}],
        },
        "outside",
    )
    _raises(
        tmp_path,
        {"version": "2.0.0", "encodings": [{"name": "x", "output_dtype": "float8e4m3fn", "y_scale": 1.0}]},
        "not supported",
        error=UnsupportedError,
    )
    _raises(tmp_path, {"version": "2.0.0", "encodings": {"x": 1}}, "'encodings' list")


def test_unsupported_float_and_vector(tmp_path):
    _raises(tmp_path, _entry_with(dtype="FLOAT", bw=8), "only fp16", error=UnsupportedError)
    _raises(tmp_path, _entry_with(enc_type="VECTOR"), "VECTOR", error=UnsupportedError)


@pytest.fixture
def net(tmp_path):
    return load_model(save(small_net(), tmp_path))


def _bind_raises(tmp_path, data, net, *needles):
    with pytest.raises(InputError) as info:
        bind_encodings(read_encodings_json(write(data, tmp_path)), net)
    for needle in needles:
        assert needle in str(info.value)


def test_names_from_another_model(tmp_path, net):
    encs = {f"layer{i}.out": (8, False, [0.5], [0], False) for i in range(7)}
    encs["relu_out1"] = (8, False, [0.5], [0], False)
    _bind_raises(
        tmp_path,
        v100(encs),
        net,
        "8 encoded tensor(s) are not in the model",
        "and 3 more",
        "belong to another model",
    )
    _bind_raises(tmp_path, v100({"relu1_ou": (8, False, [0.5], [0], False)}), net, "did you mean 'relu1_out'")


def test_per_channel_length_mismatch(tmp_path, net):
    encs = {"conv1.weight": (8, True, [0.1, 0.2, 0.3], [-128] * 3, True)}
    _bind_raises(tmp_path, v100(encs), net, "'conv1.weight' has 3 per-channel scales", "has 4 channels")
    _bind_raises(tmp_path, v200(encs), net, "'conv1.weight' has 3 per-channel scales")


def test_block_count_mismatch(tmp_path, net):
    data = v100_per_block("fc.weight", [0.1] * 6, 64)
    _bind_raises(tmp_path, data, net, "'fc.weight' has 6 block scales", "2 channels x 4 blocks")
    data["param_encodings"][0].update(block_size=100, scale=[0.1] * 4, offset=[-8.0] * 4)
    _bind_raises(tmp_path, data, net, "block_size 100 does not divide")


def test_param_entry_for_an_activation(tmp_path, net):
    _bind_raises(tmp_path, v100({"relu1_out": (8, True, [0.5], [-128], True)}), net, "not a constant")


def test_per_channel_activation_without_axis(tmp_path, net):
    _bind_raises(tmp_path, v100({"relu1_out": (8, False, [0.5, 0.25], [0, 0], False)}), net, "gives no axis")


def test_no_encodings_and_no_qdq(net):
    with pytest.raises(InputError, match="no encodings given and the model has no QuantizeLinear nodes"):
        load_encodings(None, net)


def test_all_bad_inputs_are_input_errors(tmp_path):
    assert issubclass(UnsupportedError, InputError)
    _raises(
        tmp_path, v200(SMALL_NET) | {"version": "0.6.1"}, "needs 'activation_encodings' or 'param_encodings'"
    )
