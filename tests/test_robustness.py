"""Safety guarantees: atomic reports, Ctrl-C, deterministic output, memory limits, new-user mistakes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cli_harness import qdiverge
from encodings_fixtures import SMALL_NET, v100, write
from onnx_builders import save, small_net

from qdiverge import runner
from qdiverge.errors import InputError
from qdiverge.fileio import atomic_write, atomic_write_text
from qdiverge.loading.model import load_model
from qdiverge.pipeline import check_memory

FIXTURES = Path(__file__).parent / "fixtures" / "aimet"
SRC = Path(__file__).parent.parent / "src" / "qdiverge"


def _fixture(case: str) -> list[object]:
    f = FIXTURES / case
    return [f / "model.onnx", f / "model.encodings", "--config", f / "quantsim_config.json"]


# ---- atomic output -------------------------------------------------------------------------------
def test_failing_writer_leaves_the_old_report_intact(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old report")

    def half_then_fail(fh):
        fh.write(b'{"partial": ')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old report"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temp file left behind


def test_interrupted_writer_leaves_no_file(tmp_path):
    def interrupted(fh):
        fh.write(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "new.csv", interrupted)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_reports_get_normal_permissions(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "r.md", "# report\n")
    finally:
        os.umask(old)
    assert (tmp_path / "r.md").stat().st_mode & 0o777 == mode


# ---- interruption --------------------------------------------------------------------------------
def test_keyboard_interrupt_exits_130_without_output(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_engine", interrupted)
    model, enc = save(small_net(), tmp_path), write(v100(SMALL_NET), tmp_path)
    result = qdiverge("run", model, enc, "-o", tmp_path / "out.npz")
    assert result.code == 130
    assert result.lines == ["interrupted"]
    assert not (tmp_path / "out.npz").exists()


def test_sigint_during_a_run_exits_130_and_writes_nothing(tmp_path):
    report = tmp_path / "report.json"
    args = ["bisect", *_fixture("mix_pt_asym"), "--samples", "50000", "--format", "json", "-o", report]
    proc = subprocess.Popen(
        [sys.executable, "-m", "qdiverge", "-q", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a user's terminal delivers SIGINT; a test run started in the background may have it ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(3.0)  # past imports and model loading, well before 50,000 samples are done
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "interrupted"
    assert list(tmp_path.iterdir()) == []


# ---- determinism ---------------------------------------------------------------------------------
def test_same_inputs_give_a_byte_identical_json_report(tmp_path):
    report = tmp_path / "report.json"
    contents = []
    for _ in range(2):
        result = qdiverge(
            "-q", "bisect", *_fixture("mix_pt_asym"), "--samples", "2", "--format", "json", "-o", report
        )
        assert result.code == 0, result.stderr
        contents.append(report.read_bytes())
    assert contents[0] == contents[1]
    assert json.loads(contents[0])["layers"]


# ---- memory limits -------------------------------------------------------------------------------
def test_memory_estimate_refuses_what_does_not_fit(tmp_path):
    model = load_model(save(small_net(), tmp_path))
    check_memory(model, None, available=1 << 30)  # a toy model fits in 1 GiB
    with pytest.raises(InputError, match=r"needs about .* GiB of memory and 0.0 GiB is available"):
        check_memory(model, None, available=1000)


# ---- what a new user runs into -------------------------------------------------------------------
def test_typo_in_the_model_path_suggests_the_right_file(tmp_path):
    model, enc = save(small_net(), tmp_path), write(v100(SMALL_NET), tmp_path)
    result = qdiverge("check", tmp_path / "mdoel.onnx", enc)
    assert result.code == 2
    typo = tmp_path / "mdoel.onnx"
    assert result.lines == [f"error: {typo}: model file not found; did you mean {str(model)!r}?"]


def test_typo_in_a_folder_says_which_folder_is_missing(tmp_path):
    enc = write(v100(SMALL_NET), tmp_path)
    result = qdiverge("check", tmp_path / "modles" / "model.onnx", enc)
    assert result.code == 2
    assert "folder" in result.lines[0] and "modles" in result.lines[0] and "does not exist" in result.lines[0]


def test_encodings_of_another_model_say_which_file_to_give():
    model, encodings = FIXTURES / "mbv3_pc_sym" / "model.onnx", FIXTURES / "mix_pt_asym" / "model.encodings"
    result = qdiverge("check", model, encodings)
    assert result.code == 2 and len(result.lines) == 1
    line = result.lines[0]
    assert "are not in the model" in line and "mbv3_pc_sym/model.onnx" in line
    assert "give the .encodings exported together with this .onnx" in line
    assert "did you mean" not in line  # a whole wrong file is not a typo


def _as_old_aimet(data: dict) -> dict:
    """A 0.6.1 file as aimet 1.x wrote it: no version/producer keys, no dtype, integer offsets."""
    old = {}
    for section in ("activation_encodings", "param_encodings"):
        old[section] = {
            name: [{k: int(v) if k == "offset" else v for k, v in c.items() if k != "dtype"} for c in chans]
            for name, chans in data[section].items()
        }
    return old


def test_old_aimet_061_file_still_works(tmp_path):
    case = FIXTURES / "mix_pt_asym"
    data = json.loads((case / "model-0.6.1.encodings").read_text())
    shutil.copy(case / "model.onnx", tmp_path)
    shutil.copy(case / "model.data", tmp_path)
    old = write(_as_old_aimet(data), tmp_path, "old.encodings")
    current = case / "model-0.6.1.encodings"
    new = qdiverge("-q", "run", tmp_path / "model.onnx", current, "-o", tmp_path / "a.npz")
    got = qdiverge("-q", "run", tmp_path / "model.onnx", old, "-o", tmp_path / "b.npz")
    assert new.code == 0 and got.code == 0, got.stderr
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a.files)


def test_aimet_torch_module_keyed_file_says_which_file_to_use(tmp_path):
    case = FIXTURES / "mix_pt_asym"
    data = json.loads((case / "model-0.6.1.encodings").read_text())
    first = next(iter(data["activation_encodings"].values()))[0]
    torch_style = {
        "activation_encodings": {"conv": {"input": {"0": first}, "output": {"0": first}}},
        "param_encodings": data["param_encodings"],
        "version": "0.6.1",
    }
    path = write(torch_style, tmp_path, "model_torch.encodings")
    result = qdiverge("check", case / "model.onnx", path)
    assert result.code == 2 and len(result.lines) == 1
    assert "aimet-torch's <prefix>_torch.encodings" in result.lines[0]
    assert "give the <prefix>.encodings written next to it" in result.lines[0]


# ---- what the code never does --------------------------------------------------------------------
def _source_text() -> str:
    return "\n".join(p.read_text() for p in SRC.rglob("*.py"))


def test_no_unsafe_loaders_and_no_network_in_the_package():
    text = _source_text()
    assert not re.search(r"yaml\.(load|unsafe_load|full_load)\(", text)
    assert "allow_pickle=True" not in text
    assert not re.search(r"^\s*(import|from) (pickle|dill|marshal|shelve)\b", text, re.M)
    assert not re.search(r"^\s*(import|from) (socket|urllib|http|requests)\b", text, re.M)
    assert "load_external_data=True" not in text


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim")
def test_release_free_memory_returns_freed_heap_to_the_system():
    from qdiverge.engines.base import release_free_memory

    def anonymous_mb() -> float:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("RssAnon"))
        return int(line.split()[1]) / 1024

    blocks = [np.ones(8192) for _ in range(2000)]  # 64 KB each: below the mmap threshold, on the heap
    keep = blocks[-1]
    del blocks
    before = anonymous_mb()
    release_free_memory()
    assert anonymous_mb() < before - 50  # the 125 MB just freed, less what the allocator keeps
    assert keep.sum() == 8192
