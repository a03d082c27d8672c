"""Command-line interface: parse, load, run, and map errors to exit codes.

Exit codes: 0 success (gate passed), 1 gate failed, 2 unusable input or usage error, 3 internal
error (traceback only with ``--debug``), 130 interrupted.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import traceback
from pathlib import Path

import click

from qdiverge import __version__
from qdiverge.errors import InputError, QdivergeError

log = logging.getLogger("qdiverge")


class GateFailed(Exception):
    """A CI threshold did not hold (exit 1)."""


def _options(*options):
    """Apply a group of click options in the order listed."""

    def apply(func):
        for option in reversed(options):
            func = option(func)
        return func

    return apply


# options shared by every command that loads a model
_common = _options(
    click.argument("model", type=click.Path(dir_okay=False, path_type=Path)),
    click.argument("encodings", required=False, type=click.Path(dir_okay=False, path_type=Path)),
    click.option(
        "--config",
        "config",
        type=click.Path(dir_okay=False, path_type=Path),
        help="AIMET quantsim config JSON the model was quantized with (supergroups, per-channel).",
    ),
    click.option(
        "--target",
        default="htp",
        show_default=True,
        help="Target profile: htp, hexagon-nn, tflite, onnx, or a YAML path;"
        " qnn-htp: the real HTP backend (onnxruntime-qnn) as the DSP side.",
    ),
    click.option(
        "--input-shape",
        "input_shapes",
        multiple=True,
        metavar="NAME:D1,D2,...",
        help="Fix a dynamic input shape, e.g. input:1,3,224,224 (repeatable).",
    ),
)

# where samples come from (run, bisect)
_inputs = _options(
    click.option(
        "--inputs",
        "inputs",
        type=click.Path(dir_okay=False, path_type=Path),
        help=".npy (one input, first axis = samples), .npz keyed by input name, or input_list.txt.",
    ),
    click.option(
        "--samples",
        default=0,
        show_default="all with --inputs, else 4 random (run: 1)",
        type=int,
        help="Number of samples to use; random inputs within the input encoding without --inputs.",
    ),
    click.option("--seed", default=0, show_default=True, type=int, help="Seed for random inputs."),
)


def _workspace(model, encodings, config, target, input_shapes):
    from qdiverge.loading.model import parse_input_shapes
    from qdiverge.pipeline import open_workspace

    ws = open_workspace(model, encodings, config, parse_input_shapes(input_shapes), target)
    internal = ws.supergroup_internal
    # un-encoded tensors inside a sim supergroup are expected; the emulator reports how it handles them
    unexpected = [w for w in ws.warnings if getattr(w, "tensor", None) not in internal]
    for warning in ws.warnings:
        log.info(warning)
    if unexpected:
        log.warning(
            f"{len(unexpected)} compute-op output(s) have no encoding and are not inside a sim supergroup"
            f" (first: {unexpected[0]}); -v lists them"
        )
    return ws


def _htp_arch(func):
    """``--htp-arch``: the Hexagon architecture the qnn-htp target (and ``run --engine htp``) simulates."""
    return click.option(
        "--htp-arch",
        type=click.Choice(["68", "69", "73", "75", "79", "81"]),
        default="73",
        show_default=True,
        help="HTP architecture for --target qnn-htp / --engine htp.",
    )(func)


def _source(ws, inputs, samples, seed, default_samples: int = 4):
    from qdiverge.loading.inputs import input_source

    return input_source(ws.model, inputs, samples or (0 if inputs else default_samples), seed, ws.encodings)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="qdiverge")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors and results; no progress.")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool, debug: bool) -> None:
    """Find where and why a quantized model diverges between AIMET QuantSim and a Qualcomm DSP/HTP.

    \b
    Typical use:
      qdiverge bisect model.onnx model.encodings --config quantsim_config.json
      qdiverge run model.onnx model.encodings --engine emulate -o out.npz
    """
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr)
    ctx.obj = {"quiet": quiet, "debug": debug}


@cli.command()
@_common
@_inputs
@click.option(
    "--engine",
    type=click.Choice(["float", "sim", "emulate", "htp"]),
    default="sim",
    show_default=True,
    help="float: the FP32 model; sim: AIMET QuantSim reproduction; emulate: fixed-point DSP"
    " emulator; htp: the QDQ model on Qualcomm's HTP backend (onnxruntime-qnn).",
)
@_htp_arch
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output .npz (arrays keyed by ONNX tensor name, first axis = samples).",
)
@click.option("--dump-all", is_flag=True, help="Write every encoded tensor, not just the model outputs.")
@click.option("--integers", is_flag=True, help="emulate only: also write raw integer codes as NAME::codes.")
def run(
    model,
    encodings,
    config,
    target,
    input_shapes,
    inputs,
    samples,
    seed,
    engine,
    htp_arch,
    output,
    dump_all,
    integers,
):
    """Run one engine over the inputs and write the outputs as float arrays."""
    from qdiverge.runner import run_engine

    ws = _workspace(model, encodings, config, target, input_shapes)
    source = _source(ws, inputs, samples, seed, default_samples=1)
    flagged = run_engine(
        ws, source, engine, output, dump_all=dump_all, integers=integers, htp_arch=int(htp_arch)
    )
    for line in flagged:
        click.echo(f"FLAG | {line}", err=True)
    click.echo(f"wrote {output} ({source.samples} sample(s), engine {engine})")


def _progress(enabled: bool):
    """A one-line progress display on stderr, only on a terminal."""
    if not enabled or not sys.stderr.isatty():
        return None

    def show(message: str) -> None:
        sys.stderr.write(f"\rRUNNING | {message:<60}")
        sys.stderr.flush()

    return show


def _clear_progress(enabled: bool) -> None:
    if enabled and sys.stderr.isatty():
        sys.stderr.write("\r" + " " * 72 + "\r")


def _report_options(top: int):
    return _options(
        click.option(
            "--top",
            type=click.IntRange(min=0),
            default=top,
            show_default=True,
            help="Rows in table/markdown output.",
        ),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(["table", "json", "csv", "markdown", "junit", "html"]),
            default="table",
            show_default=True,
        ),
        click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Report file."),
    )


_metric = click.option(
    "--metric",
    type=click.Choice(["sqnr", "mse", "cosine", "top1", "lsb"]),
    default="sqnr",
    show_default=True,
    help="Ranking metric (final-output divergence each cut adds).",
)

_gate = _options(
    click.option("--fail-under-sqnr", multiple=True, metavar="[TENSOR:]DB", help="Gate: SQNR >= DB."),
    click.option("--fail-over-lsb", multiple=True, metavar="[TENSOR:]N", help="Gate: max |diff| <= N LSB."),
    click.option(
        "--fail-under-top1", multiple=True, metavar="[TENSOR:]F", help="Gate: top-1 agreement >= F."
    ),
    click.option(
        "--gate-scope",
        type=click.Choice(["final", "layers", "all"]),
        default="final",
        show_default=True,
        help="Apply the gate to the final outputs, to every layer, or both.",
    ),
    click.option(
        "--baseline",
        type=click.Path(dir_okay=False, path_type=Path),
        help="An earlier --format json report; fail on regressions against it.",
    ),
)


def _command() -> list[str]:
    return ["qdiverge", *sys.argv[1:]]


def _check_limit_names(thresholds, tensors: set[str]) -> None:
    """A gate limit naming a tensor the model does not have is a typo: say so before any work."""
    for option, table in (
        ("--fail-under-sqnr", thresholds.sqnr_db),
        ("--fail-over-lsb", thresholds.max_lsb),
        ("--fail-under-top1", thresholds.top1),
    ):
        unknown = sorted(name for name in table if name and name not in tensors)
        if unknown:
            raise InputError(f"{option}: no tensor named {', '.join(map(repr, unknown))} in the model")


def _finish(report, fmt: str, output: Path | None, top: int, start: float, details: str) -> None:
    """Write the report, then turn the gate verdict into the last line and the exit code."""
    from qdiverge.reports import write_report

    write_report(report, fmt, output, top=top)
    if report.gate is not None and not report.gate:
        raise GateFailed(f"{len(report.gate.failures)} gate failure(s)")
    click.echo(f"PASSED | {time.perf_counter() - start:.1f}s | {details}", err=True)


@cli.command()
@_common
@_inputs
@click.option(
    "--mode",
    "modes",
    default="split,layerwise,cumulative",
    show_default=True,
    help="Comma list of split, layerwise, cumulative, search.",
)
@_htp_arch
@_metric
@click.option(
    "--search-threshold",
    type=float,
    default=30.0,
    show_default=True,
    help="search mode: first cut whose final-output SQNR (dB) falls below this.",
)
@click.option(
    "--labels",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Ground-truth class per sample (.npy of ints, or one per line): adds top-1 accuracy of float, sim, DSP.",
)
@click.option(
    "--rank-by",
    type=click.Choice(["contribution", "solo", "isolated"]),
    default="contribution",
    show_default=True,
    help="contribution: divergence each cut adds (split); solo: final divergence with only this layer on the"
    " DSP (layerwise); isolated: the layer's own LSB error (layerwise).",
)
@_report_options(top=20)
@_gate
@click.option(
    "--what-if",
    "what_if",
    multiple=True,
    metavar="CHANGE",
    help="Re-run with a change and show how much divergence it removes: per-channel[=NODE,...],"
    " bias-bits=8|32, encoding=TENSOR:MIN,MAX (repeatable).",
)
@click.pass_context
def bisect(ctx, model, encodings, config, target, input_shapes, inputs, samples, seed, modes, htp_arch, metric,
           search_threshold, labels, rank_by, top, fmt, output, fail_under_sqnr, fail_over_lsb, fail_under_top1,
           gate_scope, baseline, what_if):  # fmt: skip
    """Split the graph at every layer (DSP prefix, sim suffix) and rank layers by divergence.

    \b
    Modes (default: split, layerwise and cumulative together, sharing work):
      split       prefix on the emulator, suffix on the sim; rank by the divergence each cut adds
      layerwise   each op fed the sim's quantized inputs: the error the op itself adds, in LSB
      cumulative  emulator vs sim end to end, compared at every tensor
      search      binary search for the first cut where some sample's final-output SQNR falls
                  below --search-threshold dB (O(log N) suffix runs per sample)
    Exit codes: 0 gate passed, 1 gate failed, 2 bad input or usage, 3 internal error, 130 interrupted.
    """
    from qdiverge.diagnosis.whatif import parse_what_if
    from qdiverge.driver.bisect import MODES
    from qdiverge.driver.session import bisect_report, parse_modes
    from qdiverge.loading.inputs import load_labels
    from qdiverge.reports.model import Report, Thresholds, parse_limits

    start = time.perf_counter()
    wanted = parse_modes(modes, MODES)
    thresholds = Thresholds(
        sqnr_db=parse_limits(fail_under_sqnr, "--fail-under-sqnr"),
        max_lsb=parse_limits(fail_over_lsb, "--fail-over-lsb"),
        top1=parse_limits(fail_under_top1, "--fail-under-top1"),
        scope=gate_scope,
    )
    base = Report.from_json(baseline) if baseline else None
    changes = [parse_what_if(spec) for spec in what_if]
    ws = _workspace(model, encodings, config, target, input_shapes)
    _check_limit_names(thresholds, ws.model.tensor_names)
    source = _source(ws, inputs, samples, seed)
    show = not ctx.obj["quiet"]
    truth = load_labels(labels, source.samples) if labels else None
    report, result = bisect_report(
        ws,
        source,
        wanted,
        metric,
        _command(),
        search_threshold,
        changes,
        int(htp_arch),
        _progress(show),
        rank_by,
        truth,
    )
    _clear_progress(show)
    if thresholds.any or base is not None:
        report = report.with_gate(thresholds, base)
    _finish(report, fmt, output, top, start, f"{result.samples} sample(s), {len(result.steps)} layers")


@cli.command()
@_common
@click.option(
    "--fail-on",
    type=click.Choice(["info", "warning", "error", "never"]),
    default="error",
    show_default=True,
    help="Exit 1 when a finding has at least this severity.",
)
@_report_options(top=50)
def check(model, encodings, config, target, input_shapes, fail_on, top, fmt, output):
    """Static checks only (no inputs needed): what in the model, encodings or target arithmetic will diverge.

    Each finding names a rule, a severity, the numbers behind it and a suggested fix.
    Exit codes: 0 no finding at or above --fail-on, 1 otherwise, 2 bad input.
    """
    from qdiverge.driver import session
    from qdiverge.reports import write_report
    from qdiverge.reports.model import SEVERITIES

    start = time.perf_counter()
    ws = _workspace(model, encodings, config, target, input_shapes)
    report, findings = session.check(ws, _command())
    write_report(report, fmt, output, top=top)
    counts = ", ".join(f"{sum(f.severity == sev for f in findings)} {sev}" for sev in SEVERITIES)
    worst = max((SEVERITIES.index(f.severity) for f in findings), default=-1)
    if fail_on != "never" and worst >= SEVERITIES.index(fail_on):
        raise GateFailed(f"findings: {counts} (--fail-on {fail_on})")
    click.echo(f"PASSED | {time.perf_counter() - start:.1f}s | findings: {counts}", err=True)


@cli.command()
@_common
@click.option(
    "--device-outputs",
    "device_outputs",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="qnn-net-run/snpe-net-run --output_dir of a --debug run (Result_N/<tensor>.raw).",
)
@click.option(
    "--inputs",
    "inputs",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The input list (or .npy/.npz) the device ran, in the same sample order.",
)
@click.option("--samples", default=0, show_default="all", type=int, help="Use only the first N samples.")
@click.option(
    "--layout",
    type=click.Choice(["nchw", "nhwc"]),
    default="nchw",
    show_default=True,
    help="Layout of rank-4 dumps (nhwc: channel-last, transposed back to ONNX order).",
)
@click.option(
    "--mode", "modes", default="split,cumulative", show_default=True, help="Comma list of split, cumulative."
)
@_metric
@_report_options(top=20)
def compare(model, encodings, config, target, input_shapes, device_outputs, inputs, samples, layout, modes,
            metric, top, fmt, output):  # fmt: skip
    """Rank layers by sim-vs-device divergence from a real device run's per-tensor dumps.

    The device is the DSP side of bisect: cumulative compares every dumped tensor with the sim, split
    feeds the device's tensors into the sim suffix. Missing tensors are reported, not fatal.
    """
    from qdiverge.driver.compare import COMPARE_MODES
    from qdiverge.driver.session import compare_report, parse_modes

    start = time.perf_counter()
    wanted = parse_modes(modes, COMPARE_MODES)
    ws = _workspace(model, encodings, config, target, input_shapes)
    source = _source(ws, inputs, samples, 0)
    report, result, dumps = compare_report(ws, source, device_outputs, layout, wanted, metric, _command())
    details = (
        f"{result.samples} sample(s), {dumps.matched} dumped tensor(s) matched,"
        f" {len(dumps.missing)} layer tensor(s) missing, {len(dumps.unmatched)} unmatched"
    )
    _finish(report, fmt, output, top, start, details)


def _ort_failure(exc: Exception) -> str | None:
    """One line for an onnxruntime error raised while running the model, else None.

    ORT accepts some invalid models (a Conv weight that does not match its input) and fails only when
    it runs them; that is the model's problem, so it is reported like bad input, minus ORT's C++ prefix.
    """
    if not type(exc).__module__.startswith("onnxruntime"):
        return None
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"^\S+\.(?:cc|h|cpp):\d+ .*?\) ", "", text)  # source file and C++ signature
    return f"onnxruntime failed running the model: {text}"


def main() -> None:
    """Entry point: run the click group and turn every failure into an exit code and one line."""
    debug = "--debug" in sys.argv
    start = time.perf_counter()
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except GateFailed as exc:
        click.echo(f"FAILED | {exc} | {time.perf_counter() - start:.1f}s", err=True)
        sys.exit(1)
    except QdivergeError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except MemoryError:
        click.echo("error: out of memory; use fewer --samples or a smaller --input-shape", err=True)
        sys.exit(2)
    except Exception as exc:  # a bug: say so, hide the traceback unless asked
        if debug:
            traceback.print_exc()
        ort = _ort_failure(exc)
        if ort is not None:
            click.echo(f"error: {ort}", err=True)
            sys.exit(2)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        hint = "rerun with --debug for a traceback"
        click.echo(f"internal error: {type(exc).__name__}: {first} ({hint})", err=True)
        sys.exit(3)


__all__ = ["GateFailed", "InputError", "cli", "main"]
