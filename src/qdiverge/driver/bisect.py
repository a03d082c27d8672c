"""The bisection driver: split, layerwise, cumulative and search modes over streamed samples.

Per sample the sim runs once (capturing every tensor) and the emulator runs once (keeping every
tensor); split mode then runs only the sim *suffix* after each cut, fed with the emulator's values
of the tensors live across it. Metrics accumulate across samples, so memory does not grow with
the sample count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from qdiverge.driver.cuts import Cut, plan_cuts
from qdiverge.encodings.schema import Encoding
from qdiverge.engines.qtensor import QTensor
from qdiverge.errors import InputError
from qdiverge.loading.inputs import InputSource
from qdiverge.metrics import MetricsAccumulator, TensorMetrics
from qdiverge.quant import quantize_aimet

MODES = ("split", "layerwise", "cumulative", "search")
Progress = Callable[[str], None]


@dataclass
class StepOutcome:
    """Everything measured for one emulator step (one target op, after fusion)."""

    index: int
    node: str
    op_type: str
    tensor: str
    encoding: Encoding | None
    flags: tuple[str, ...]
    nodes: tuple[str, ...]
    isolated: TensorMetrics | None = None
    cumulative: TensorMetrics | None = None
    split_final: TensorMetrics | None = None
    solo: TensorMetrics | None = None
    contribution: float = 0.0


@dataclass
class BisectResult:
    """Per-step outcomes (graph inputs first, index -1) and final-output metrics per model output."""

    steps: list[StepOutcome]
    final_emu_vs_sim: dict[str, TensorMetrics]
    final_sim_vs_float: dict[str, TensorMetrics]
    search_first_cut: int | None = None
    samples: int = 0
    modes: tuple[str, ...] = ()
    suffix_runs: int = 0
    # the same final-output measurements on two halves of the samples (even / odd), per cut and per step:
    # how well each ranking reproduces from one half to the other
    split_halves: tuple[list[TensorMetrics | None], ...] = ()
    solo_halves: tuple[list[TensorMetrics | None], ...] = ()
    # top-1 accuracy of the first output against ground-truth labels: "float", "sim", "dsp"
    accuracy: dict[str, float] = field(default_factory=dict)


def _step_tensor(step) -> str:
    return step.outputs[-1] if step.outputs else ""


def _quantized_view(value: np.ndarray, enc: Encoding | None) -> QTensor:
    """The codes the sim holds for ``value`` (exact when ``value`` is on ``enc``'s grid)."""
    if enc is None or enc.is_float or value.dtype.kind != "f":
        return QTensor(codes=value, encoding=None)
    return QTensor(codes=quantize_aimet(value, enc), encoding=enc)


def _real_rows(real: int, batch: int):
    """A function keeping the rows of the ``real`` leading samples of a padded batch (identity when full)."""
    if real == batch:
        return lambda a: a
    return lambda a: np.asarray(a)[: real * (np.asarray(a).shape[0] // batch)]


def _hits(logits: np.ndarray, truth: np.ndarray) -> int:
    """How many samples' arg-max class (last axis) equals ``truth``; one row of logits per sample."""
    predicted = np.asarray(logits).reshape(len(truth), -1).argmax(axis=1)
    return int(np.count_nonzero(predicted == truth))


class Bisector:
    """Runs the requested modes for one workspace over an input source."""

    def __init__(
        self, sim, emulator, float_engine, outputs: Sequence[str], output_encodings: dict[str, Encoding]
    ):
        self.sim = sim
        self.emu = emulator
        self.float = float_engine
        self.outputs = list(outputs)
        self.output_encodings = output_encodings
        self.steps = list(emulator.steps)
        self.cuts: list[Cut] = plan_cuts(
            emulator.model,
            [tuple(n.name for n in s.nodes) for s in self.steps],
            [tuple(s.outputs) for s in self.steps],
        )

    def _final_acc(self) -> dict[str, MetricsAccumulator]:
        return {o: MetricsAccumulator(self.output_encodings.get(o), topk=5) for o in self.outputs}

    def run(
        self,
        source: InputSource,
        modes: Sequence[str],
        search_threshold_db: float | None = None,
        progress: Progress | None = None,
        batch: int = 1,
        labels: np.ndarray | None = None,
    ) -> BisectResult:
        """Measure ``modes`` over ``source``, ``batch`` samples per engine call (the engines' batch size)."""
        modes = tuple(m for m in MODES if m in modes)
        steps = self.steps
        inputs = [t for t in self.emu.model.inputs if self.emu.target_encodings.get(t) is not None]
        tensors = [*inputs, *(_step_tensor(s) for s in steps)]
        iso = [MetricsAccumulator(self.emu.target_encodings.get(t)) for t in tensors]
        cum = [MetricsAccumulator(self.emu.target_encodings.get(t)) for t in tensors]
        split = [self._final_acc() for _ in self.cuts]
        solo = [self._final_acc() for _ in steps]
        split_h = [[self._final_acc() for _ in self.cuts] for _ in range(2)]
        solo_h = [[self._final_acc() for _ in steps] for _ in range(2)]
        correct = {"float": 0, "sim": 0, "dsp": 0}
        final = self._final_acc()
        sim_vs_float = self._final_acc()
        captured = sorted({*inputs, *(t for s in steps for t in (*s.inputs, *s.outputs))})
        samples = suffix_runs = 0
        first_batch = True
        search_votes: list[int] = []
        for sample, real in source.batches(batch):
            first_sample = samples
            samples += real
            keep = _real_rows(real, batch)
            if progress:
                progress(f"sample {samples}/{source.samples}: sim + emulator")
            sim_vals = self.sim.run(sample, capture=captured)
            emu_vals = self.emu.run(sample, keep="all")
            float_out = self.float.run(sample)
            for o in self.outputs:
                final[o].update(keep(sim_vals[o]), keep(emu_vals[o].dequantize()))
                sim_vs_float[o].update(keep(float_out[o]), keep(sim_vals[o]))
            if labels is not None:
                truth = labels[first_sample:samples]
                first = self.outputs[0]
                for side, logits in (("float", float_out[first]), ("sim", sim_vals[first])):
                    correct[side] += _hits(keep(logits), truth)
                correct["dsp"] += _hits(keep(emu_vals[first].dequantize()), truth)
            for i, t in enumerate(inputs):  # input quantization is its own "layer"
                if t not in emu_vals:  # a DSP side that cannot expose it (qnn-htp)
                    continue
                iso[i].update(keep(sim_vals[t]), keep(emu_vals[t].dequantize()))
                cum[i].update(keep(sim_vals[t]), keep(emu_vals[t].dequantize()))
            if first_batch and ("split" in modes or "layerwise" in modes):
                self._prepare_cuts(emu_vals)
            first_batch = False
            first = len(inputs)
            if "cumulative" in modes:
                for k, s in enumerate(steps):
                    t = _step_tensor(s)
                    if t in emu_vals and t in sim_vals:
                        cum[first + k].update(keep(sim_vals[t]), keep(emu_vals[t].dequantize()))
            if "layerwise" in modes:
                for k, s in enumerate(steps):
                    feeds = {
                        t: _quantized_view(sim_vals[t], self.emu.target_encodings.get(t))
                        for t in s.inputs
                        if t in sim_vals
                    }
                    out = self.emu.run_step(s, feeds)
                    t = _step_tensor(s)
                    if t in out and t in sim_vals:
                        iso[first + k].update(keep(sim_vals[t]), keep(out[t].dequantize()))
                    got = self._run_solo(self.cuts[k + 1], out, sim_vals)
                    suffix_runs += 1
                    self._update_final(
                        solo[k], [h[k] for h in solo_h], sim_vals, got, first_sample, batch, real
                    )
            if "split" in modes:
                for c, cut in enumerate(self.cuts):
                    if progress and c % 10 == 0:
                        progress(f"sample {samples}/{source.samples}: cut {c + 1}/{len(self.cuts)}")
                    if not _usable(cut, emu_vals):
                        continue  # the next usable cut carries this layer's contribution
                    got = self._run_cut(cut, emu_vals)
                    suffix_runs += 1
                    self._update_final(
                        split[c], [h[c] for h in split_h], sim_vals, got, first_sample, batch, real
                    )
            if "search" in modes and search_threshold_db is not None:
                found, runs = self._search(emu_vals, sim_vals, search_threshold_db)  # unbatched: real == 1
                suffix_runs += runs
                if found is not None:
                    search_votes.append(found)
        if samples == 0:
            raise InputError("the input source gave no samples")

        per_cut = (
            [_combine(acc) if next(iter(acc.values())).n else None for acc in split]
            if "split" in modes
            else [None] * len(self.cuts)
        )
        outcomes = [
            StepOutcome(
                index=-1,
                node=t,
                op_type="QuantizeInput",
                tensor=t,
                encoding=self.emu.target_encodings.get(t),
                flags=(),
                nodes=(),
                isolated=iso[i].result() if iso[i].n else None,
                cumulative=cum[i].result() if cum[i].n else None,
                split_final=per_cut[0] if i == 0 else None,
                solo=per_cut[0] if i == 0 else None,  # the input cut is input quantization alone
            )
            for i, t in enumerate(inputs)
        ]
        for k, s in enumerate(steps):
            t = _step_tensor(s)
            acc_iso, acc_cum = iso[len(inputs) + k], cum[len(inputs) + k]
            outcomes.append(
                StepOutcome(
                    index=k,
                    node=s.nodes[0].name if s.nodes else t,
                    op_type="+".join(n.op_type for n in s.nodes),
                    tensor=t,
                    encoding=self.emu.target_encodings.get(t),
                    flags=tuple(s.flags),
                    nodes=tuple(n.name for n in s.nodes),
                    isolated=acc_iso.result() if acc_iso.n else None,
                    cumulative=acc_cum.result() if acc_cum.n else None,
                    split_final=per_cut[k + 1],
                    solo=_combine(solo[k]) if next(iter(solo[k].values())).n else None,
                )
            )
        accuracy = {k: v / samples for k, v in correct.items()} if labels is not None and samples else {}
        halves = lambda accs: [_combine(a) if next(iter(a.values())).n else None for a in accs]  # noqa: E731
        return BisectResult(
            accuracy=accuracy,
            split_halves=tuple(halves(h) for h in split_h) if "split" in modes else (),
            solo_halves=tuple(halves(h) for h in solo_h) if "layerwise" in modes else (),
            steps=outcomes,
            final_emu_vs_sim={o: acc.result() for o, acc in final.items()},
            final_sim_vs_float={o: acc.result() for o, acc in sim_vs_float.items()},
            search_first_cut=min(search_votes) if search_votes else None,
            samples=samples,
            modes=modes,
            suffix_runs=suffix_runs,
        )

    def _update_final(self, whole, halves, sim_vals, got, first_sample: int, batch: int, real: int) -> None:
        """Accumulate final outputs into ``whole`` and, sample by sample, into the even / odd half.

        A batched run stacks ``batch`` samples on axis 0, so each output splits into ``batch`` equal row
        blocks, of which the first ``real`` are samples (the rest pad a short last batch); sample
        ``first_sample + j`` goes to half ``(first_sample + j) % 2``."""
        for o in self.outputs:
            ref, test = sim_vals[o], got[o]
            rows = (
                list(zip(np.split(ref, batch), np.split(test, batch), strict=True))[:real]
                if batch > 1
                else [(ref, test)]
            )
            if real == batch:
                whole[o].update(ref, test)
            else:  # a padded last batch: only the real samples' rows
                whole[o].update(np.concatenate([r for r, _ in rows]), np.concatenate([t for _, t in rows]))
            for j, (r, t) in enumerate(rows):
                halves[(first_sample + j) % 2][o].update(r, t)

    def _prepare_cuts(self, emu_vals: dict[str, QTensor]) -> None:
        """Build every cut's suffix session up front, in parallel (the values only give the dtypes)."""
        usable = [cut for cut in self.cuts if _usable(cut, emu_vals)]
        self.sim.prepare_suffixes(
            ({t: emu_vals[t].dequantize() for t in c.live} for c in usable), self.outputs
        )

    def _run_solo(self, cut: Cut, step_out: dict[str, QTensor], sim_vals: dict[str, np.ndarray]):
        """Final outputs with only one step on the DSP side: its outputs from the emulator (fed the sim's
        inputs), every other tensor live across the cut from the sim."""
        feeds = {t: step_out[t].dequantize() if t in step_out else sim_vals[t] for t in cut.live}
        return self.sim.run_suffix(feeds, self.outputs)

    def _run_cut(self, cut: Cut, emu_vals: dict[str, QTensor]) -> dict[str, np.ndarray]:
        feeds = {t: emu_vals[t].dequantize() for t in cut.live}
        return self.sim.run_suffix(feeds, self.outputs)

    def _search(self, emu_vals, sim_vals, threshold_db: float) -> tuple[int | None, int]:
        """Binary search for the first cut whose final-output SQNR falls below ``threshold_db``."""
        cuts = [c for c in self.cuts if _usable(c, emu_vals)]
        lo, hi = 0, len(cuts) - 1
        runs = 0

        def below(c: int) -> bool:
            nonlocal runs
            runs += 1
            got = self._run_cut(cuts[c], emu_vals)
            acc = self._final_acc()
            for o in self.outputs:
                acc[o].update(sim_vals[o], got[o])
            return _combine(acc).sqnr_db < threshold_db

        if not below(hi):
            return None, runs
        while lo < hi:
            mid = (lo + hi) // 2
            if below(mid):
                hi = mid
            else:
                lo = mid + 1
        return cuts[lo].step_index, runs


def _usable(cut: Cut, dsp_vals: dict[str, QTensor]) -> bool:
    """A cut needs every live tensor from the DSP side; a real target may not expose fused-away ones."""
    return all(t in dsp_vals for t in cut.live)


def _combine(accs: dict[str, MetricsAccumulator]) -> TensorMetrics:
    """One metrics record over all model outputs (the first output when there is only one)."""
    values = list(accs.values())
    merged = values[0]
    for other in values[1:]:
        merged = merged.merged(other)
    return merged.result()
