"""Ask trained variants about new inputs: which runs answer, their models and preprocessing (both
cached), and the answers with the experts each input went to.

A run is one variant of one job; it can answer once finished (results.json written, weights/best.pt
kept). Without a choice, each variant answers through its best run by validation metric across the
experiment's jobs (seeds and grid points), as the report would pick it.
"""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from moelab.data import CLASSIFICATION, DataSettings
from moelab.data.preprocessing import InputPreprocessing, PreprocessingMismatch, RawFormat, input_preprocessing
from moelab.models import build_model, model_params
from moelab.results.errors import DamagedRecord
from moelab.results.metric_direction import higher_is_better
from moelab.results.tree import ExperimentTree
from moelab.results.records import JobSpec, TestedWeights, read_variant_results
from moelab.serve.catalog import Catalog
from moelab.serve.errors import BadInput, NotFound, NotServable
from moelab.train.evaluate import complete, predict

# what the classes of each dataset are called (the outputs of the others are their indices)
CLASS_NAMES = {
    "fashion_mnist": ["T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                      "ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
}
PREDICT_BATCH = 256


@dataclass
class Run:
    experiment: str
    job: str
    variant: str
    model: str
    params: dict
    grid_values: dict
    seed: int
    data: dict
    metric: str | None
    best_val: float | None
    tested: TestedWeights  # the weights best.pt holds (those tested), and the gate state they were tested with
    weights: Path
    selected: str = ""  # why this run answers

    def describe(self) -> dict:
        return {"experiment": self.experiment, "job": self.job, "variant": self.variant, "model": self.model,
                "grid_values": self.grid_values, "seed": self.seed, "dataset": self.data.get("name"),
                "metric": self.metric, "best_val": _finite(self.best_val), "tested_val": _finite(self.tested.val),
                "tested_epoch": self.tested.epoch,
                "num_experts": self.params.get("num_experts"), "selected": self.selected}


class Predictor:
    def __init__(self, catalog: Catalog, max_models: int = 32):
        self.catalog = catalog
        self.max_models = max_models
        self._models: OrderedDict[tuple, torch.nn.Module] = OrderedDict()
        self._preprocessing: dict[tuple, InputPreprocessing] = {}
        self._lock = threading.Lock()  # loads one thing at a time; answering runs in parallel

    # --- which runs -------------------------------------------------------------------------------
    def finished_runs(self, tree: ExperimentTree) -> list[Run]:
        runs = []
        for job in self.catalog.jobs(tree):
            try:
                spec = self.catalog.reads.job_spec(job)
            except DamagedRecord:
                continue  # a damaged job cannot answer; the dashboard lists why
            for variant in spec.variants:
                run = self._run(tree, spec, variant["name"])
                if run is not None:
                    runs.append(run)
        return runs

    def _run(self, tree: ExperimentTree, spec: JobSpec, name: str) -> Run | None:
        out = self.catalog.job(tree, spec.key).variant(name)
        if not out.best_weights.is_file():
            return None
        try:
            results = read_variant_results(out, read=self.catalog.reads.json)
            tested = results.tested(spec.train)
        except (FileNotFoundError, DamagedRecord):
            return None  # unfinished (no results.json yet) or damaged: the dashboard lists why
        variant = spec.variant(name)
        return Run(tree.name, spec.key, name, variant["model"], model_params(variant), spec.grid_values, spec.seed,
                   spec.data, results.metric, results.best_val, tested, out.best_weights)

    def select(self, experiment: str, job: str | None = None, variant: str | None = None) -> list[Run]:
        """The runs that answer: the one asked for, every finished variant of a job, or the best run of
        each variant (of one variant, when only `variant` is given)."""
        tree = self.catalog.experiment(experiment)
        if job is not None:
            job_tree = self.catalog.job(tree, job)
            try:
                spec = self.catalog.reads.job_spec(job_tree)
            except DamagedRecord as error:
                raise NotServable(f"job {job} of {tree.name} cannot answer: {error.path.name}: {error.problem}") from None
            names = [variant] if variant is not None else spec.variant_names
            if variant is not None and spec.variant(variant) is None:
                raise NotFound(f"job {job} of {tree.name} has no variant {variant!r}; it has: "
                               f"{', '.join(spec.variant_names)}")
            runs = [r for r in (self._run(tree, spec, n) for n in names) if r is not None]
            if not runs:
                what = f"variant {variant} of job {job} has not finished" if variant else f"no variant of job {job} has finished"
                raise NotServable(f"{what}: only finished runs (results.json and weights/best.pt written) can answer")
            for run in runs:
                run.selected = "asked for"
            return runs
        runs = self.finished_runs(tree)
        if variant is not None:
            known = {r.variant for r in runs}
            if variant not in known:
                raise NotFound(f"experiment {tree.name} has no finished run of variant {variant!r}; finished variants: "
                               f"{', '.join(sorted(known)) or 'none yet'}")
        if not runs:
            raise NotServable(f"experiment {tree.name} has no finished runs yet")
        best: dict[str, Run] = {}
        counts: dict[str, int] = {}
        for run in runs:  # in job key order: ties go to the first
            counts[run.variant] = counts.get(run.variant, 0) + 1
            current = best.get(run.variant)
            if current is None or _rank(run) > _rank(current):
                best[run.variant] = run
        chosen = [best[variant]] if variant is not None else list(best.values())
        for run in chosen:
            run.selected = (f"best validation {run.metric} of {counts[run.variant]} finished run(s) of {run.variant}"
                            if run.metric else "the only finished run")
        return chosen

    # --- what a run needs -------------------------------------------------------------------------
    def preprocessing(self, run: Run) -> InputPreprocessing:
        key = (json.dumps(run.data, sort_keys=True), run.seed)
        with self._lock:
            if key not in self._preprocessing:
                try:
                    settings = DataSettings(**run.data)
                    self._preprocessing[key] = input_preprocessing(settings, run.seed)
                except (TypeError, KeyError, ValueError, FileNotFoundError, PreprocessingMismatch) as error:
                    raise NotServable(f"run {run.job}/{run.variant}: its dataset cannot be prepared "
                                      f"({type(error).__name__}: {error})") from None
            return self._preprocessing[key]

    def model(self, run: Run) -> torch.nn.Module:
        prep = self.preprocessing(run)
        try:
            info = run.weights.stat()
        except OSError:
            raise NotServable(f"run {run.job}/{run.variant}: weights/best.pt is gone") from None
        key = (str(run.weights), info.st_mtime_ns, info.st_size)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            try:
                model = build_model(run.model, prep.d_in, prep.d_out, run.params, prep.input_shape)
                model.load_state_dict(torch.load(run.weights, map_location="cpu", weights_only=True))
            except Exception as error:  # a damaged or foreign weights file, parameters that no longer build
                raise NotServable(f"run {run.job}/{run.variant}: the model cannot be loaded "
                                  f"({type(error).__name__}: {str(error)[:200]})") from None
            model.eval()
            model.set_progress(run.tested.progress)  # the gate as it was tested
            self._models[key] = model
            while len(self._models) > self.max_models:
                self._models.popitem(last=False)
            return model

    def input_format(self, runs: list[Run]) -> tuple[RawFormat, str]:
        """The raw format every chosen run takes, and the dataset's name."""
        formats = {}
        for run in runs:
            prep = self.preprocessing(run)
            formats.setdefault((prep.raw, prep.dataset), []).append(f"{run.job}/{run.variant}")
        if len(formats) > 1:
            described = "; ".join(f"{', '.join(names)}: {dataset} {list(fmt.shape)}"
                                  for (fmt, dataset), names in formats.items())
            raise BadInput(f"the chosen runs take different inputs ({described}); ask them one job at a time")
        (fmt, dataset), = formats
        return fmt, dataset

    # --- answers ----------------------------------------------------------------------------------
    def answer(self, runs: list[Run], raw: np.ndarray, names: list[str] | None = None) -> list[dict]:
        """Each run's answer for raw inputs [N, *shape] (already checked by inputs.batch)."""
        answers = []
        for run in runs:
            prep = self.preprocessing(run)
            model = self.model(run)
            x = prep(raw)
            result = predict(model, x, prep.task, batch_size=PREDICT_BATCH)
            predictions = []
            for i in range(len(raw)):
                record: dict = {"input": names[i] if names else i}
                if prep.task == CLASSIFICATION:
                    record["predicted"] = int(result.predicted[i])
                    record["probabilities"] = _floats(result.outputs[i])
                else:
                    record["outputs"] = _floats(result.outputs[i])
                if result.experts is not None:
                    record["experts"] = [int(e) for e in result.experts[i]]
                    record["expert_weights"] = _floats(result.expert_weights[i])
                predictions.append(record)
            answer = {**run.describe(), "task": prep.task, "classes": CLASS_NAMES.get(prep.dataset),
                      "predictions": predictions}
            if result.experts is not None:
                answer["experts_per_input"] = int(result.experts.shape[1])
            answers.append(answer)
        return answers


    def complete(self, runs: list[Run], prompts: list[str], length: int, temperature: float, seed: int) -> list[dict]:
        """Each language-model run's completion of each prompt, with the experts each MoE layer chose for
        every generated byte (`length` bytes; temperature 0: greedy; seeded draws otherwise)."""
        answers = []
        for run in runs:
            model = self.model(run)
            completions = []
            for i, prompt in enumerate(prompts):
                try:
                    done = complete(model, prompt.encode("utf-8"), length, temperature, seed)
                except ValueError as error:
                    raise BadInput(f"prompt {i}: {error}") from None
                completions.append({"input": i, "prompt": prompt,
                                    "completion": done.generated.decode("utf-8", errors="replace"),
                                    "bytes": list(done.generated), "experts": done.experts,
                                    "expert_weights": done.expert_weights})
            answers.append({**run.describe(), "task": self.preprocessing(run).task, "predictions": completions,
                            "moe_layers": len(completions[0]["experts"][0]) if completions and completions[0]["experts"] else 0})
        return answers


def _rank(run: Run) -> float:
    """The validation metric of the weights that answer (not the best epoch's, with checkpoint: last),
    larger when better (bits per byte are negated)."""
    if run.tested.val is None or not math.isfinite(run.tested.val):
        return -math.inf
    return run.tested.val if run.metric is None or higher_is_better(run.metric) else -run.tested.val


def _finite(value):
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def _floats(values: torch.Tensor) -> list:
    return [_finite(round(float(v), 6)) for v in values]
