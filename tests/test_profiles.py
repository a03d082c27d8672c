"""Profile loading: the shipped targets load, and bad files fail with one line naming file and key."""

from __future__ import annotations

import pytest

from qdiverge.errors import InputError
from qdiverge.profiles import available_profiles, load_profile


def test_shipped_profiles_load():
    assert set(available_profiles()) >= {"htp", "hexagon-nn", "tflite", "onnx"}
    tfl = load_profile("tflite")
    assert tfl.conv.double_rounding and tfl.conv.rounding == "half_away"
    hex_nn = load_profile("hexagon-nn")
    assert (hex_nn.conv.multiplier, hex_nn.conv.zero_point) == ("q31_unnormalized", "folded")
    assert ("Conv", "HardSwish") in load_profile("htp").fusions


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("name: x\nrounding_mode: half_up\n", "'rounding_mode' is not a known field"),
        ("name: x\nconv:\n  rounding: halfup\n", "'conv.rounding': 'halfup' is not one of"),
        ("name: x\nbias_bits: '32'\n", "expected int"),
        ("name: x\ninput_reciprocal: 1\n", "expected bool"),
        ("name: x\nbias_bits: true\n", "expected int"),
        ("name: x\nfusions: [[Conv]]\n", "each fusion must be a list of >= 2 op types"),
        ("- just\n- a list\n", "must be a YAML mapping"),
        ("name: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_profiles(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        load_profile(path)
    assert str(path) in str(info.value) and fragment in str(info.value)


def test_unknown_name_lists_available():
    with pytest.raises(InputError, match=r"available: .*htp"):
        load_profile("nope")
