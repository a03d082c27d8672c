"""Property tests for the encodings, config and profile readers.

Random valid entries survive a write/read round trip exactly; random garbage (mutated fields, random
JSON documents, random bytes) never raises anything but ``InputError``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from encodings_fixtures import SMALL_NET, v061, v100, v200
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx_builders import save, small_net

from qdiverge.encodings.aimet import read_encodings_json
from qdiverge.encodings.bind import bind_encodings
from qdiverge.encodings.config import read_quantsim_config
from qdiverge.errors import InputError
from qdiverge.loading.model import load_model
from qdiverge.profiles import load_profile

WRITERS = {"0.6.1": v061, "1.0.0": v100, "2.0.0": v200}
CONFIG = Path(__file__).parent / "fixtures" / "aimet" / "mix_pt_asym" / "quantsim_config.json"
FAST = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_TMP = Path(tempfile.mkdtemp(prefix="qdiverge-props-"))
_MODEL = load_model(save(small_net(), _TMP))


@st.composite
def encoding_entry(draw):
    bw = draw(st.integers(2, 16))
    channels = draw(st.integers(1, 4))
    scales = draw(st.lists(st.floats(1e-30, 1e30), min_size=channels, max_size=channels))
    offsets = draw(st.lists(st.integers(-((1 << bw) - 1), 0), min_size=channels, max_size=channels))
    return bw, draw(st.booleans()), scales, offsets, draw(st.booleans())


def _write(text: str | bytes, name: str = "x.encodings") -> Path:
    path = _TMP / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


@FAST
@given(entries=st.lists(encoding_entry(), min_size=1, max_size=5), version=st.sampled_from(sorted(WRITERS)))
def test_valid_entries_round_trip(entries, version):
    encs = {f"t{i}": e for i, e in enumerate(entries)}
    encset = read_encodings_json(_write(json.dumps(WRITERS[version](encs))))
    assert encset.version == version
    for name, (bw, signed, scales, offsets, _) in encs.items():
        got = encset.get(name)
        assert got is not None and got.bitwidth == bw and got.signed == signed
        assert got.scale.tolist() == scales and got.offset.tolist() == offsets


garbage = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def _only_input_errors(path: Path) -> None:
    try:
        encset = read_encodings_json(path)
        bind_encodings(encset, _MODEL)
    except InputError as exc:
        assert "\n" not in str(exc)


def _mutate(doc: dict, version: str, data) -> None:
    if version == "2.0.0":
        entry = data.draw(st.sampled_from(doc["encodings"]))
    elif version == "1.0.0":
        entry = data.draw(st.sampled_from(doc["activation_encodings"] + doc["param_encodings"]))
    else:
        section = doc[data.draw(st.sampled_from(["activation_encodings", "param_encodings"]))]
        entry = data.draw(st.sampled_from(list(section.values())))[0]
    key = data.draw(st.sampled_from([*entry, "axis", "block_size", "enc_type", "extra"]))
    entry[key] = data.draw(garbage)


@FAST
@given(version=st.sampled_from(sorted(WRITERS)), data=st.data())
def test_mutated_fields_only_raise_input_errors(version, data):
    doc = copy.deepcopy(WRITERS[version](SMALL_NET))
    for _ in range(data.draw(st.integers(1, 3))):
        _mutate(doc, version, data)
    _only_input_errors(_write(json.dumps(doc)))


@FAST
@given(doc=garbage, version=st.sampled_from(["0.6.1", "1.0.0", "2.0.0", None]))
def test_random_documents_only_raise_input_errors(doc, version):
    if version is not None:
        doc = {"version": version, "encodings": doc, "activation_encodings": doc, "param_encodings": doc}
    _only_input_errors(_write(json.dumps(doc)))


@FAST
@given(raw=st.binary(max_size=200))
def test_random_bytes_only_raise_input_errors(raw):
    _only_input_errors(_write(raw))


@FAST
@given(data=st.data())
def test_mutated_quantsim_configs_only_raise_input_errors(data):
    cfg = json.loads(CONFIG.read_text())
    section = data.draw(st.sampled_from(sorted(cfg)))
    if isinstance(cfg[section], dict) and cfg[section] and data.draw(st.booleans()):
        cfg[section][data.draw(st.sampled_from(sorted(cfg[section])))] = data.draw(garbage)
    else:
        cfg[section] = data.draw(garbage)
    with contextlib.suppress(InputError):
        read_quantsim_config(_write(json.dumps(cfg), "cfg.json"))


PROFILE_KEYS = [
    "conv",
    "eltwise",
    "lut",
    "fusions",
    "bias_bits",
    "accumulator",
    "input_rounding",
    "name",
    "unknown",
]


@FAST
@given(doc=st.dictionaries(st.sampled_from(PROFILE_KEYS), garbage, max_size=4))
def test_random_profiles_only_raise_input_errors(doc):
    with contextlib.suppress(InputError):
        load_profile(_write(yaml.safe_dump(doc), "target.yaml"))


@pytest.mark.parametrize("version", sorted(WRITERS))
def test_round_trip_writers_cover_per_channel(version):
    encset = read_encodings_json(_write(json.dumps(WRITERS[version](SMALL_NET))))
    assert encset.get("conv1.weight").scale.size == 4
    assert np.array_equal(encset.get("conv1.weight").offset, [-128] * 4)
