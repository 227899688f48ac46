"""Train one variant of a job: the epoch loop, early stopping, checkpoints, resume, test results.

Read top to bottom: `train_variant` is the whole story, `fit` (the epoch loop) then `finish` (test,
analysis, results.json); the helpers below them do one thing each. Variants whose training is identical
train once (`train_members`): each is still validated, stopped, checkpointed and tested on its own.
The full training state is checkpointed atomically after every epoch (weights/last.pt), so an
interrupted variant resumes from its last finished epoch and ends exactly as an uninterrupted one.
The same checkpoint lets a job with more epochs continue a finished shorter one (`continued_from`).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from moelab.data.task_data import TaskData
from moelab.models import build_model, model_params
from moelab.models.base import count_parameters
from moelab.results.io import append_jsonl, atomic_write, file_sha256, write_json, write_jsonl
from moelab.results.records import TestedWeights
from moelab.results.tree import JobTree, VariantTree, set_aside
from moelab.train.analysis import write_expert_analysis
from moelab.train.evaluate import evaluate, predict, test_results
from moelab.train.ranks import current_ranks, data_parallel, weight_layout
from moelab.train.settings import TrainSettings
from moelab.train.tasks import TASKS, batch_stats, finish_metrics


class StopRequested(Exception):
    """Raised between two batches or two epochs when the caller asked to stop: nothing of the epoch in
    progress is written, and the checkpoint of the last finished one is already on disk."""


class TrainingDiverged(Exception):
    """A loss became NaN or infinite: the variant stops (and is recorded as failed) before the weights
    of that epoch are saved."""


@dataclass
class EarlyStopping:
    patience: int
    min_delta: float
    higher_is_better: bool = True  # the validation metric's direction (bits per byte: lower)
    best: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record this epoch's validation metric; True when it is a new best."""
        gain = value - self.best if self.higher_is_better else self.best - value
        if gain > self.min_delta or self.best_epoch < 0:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience


@dataclass
class Fit:
    """What the epoch loop leaves for the finishing work."""

    model: torch.nn.Module
    history: list[dict]
    stopper: EarlyStopping
    provenance: dict
    execution: dict  # precision, compiled, deterministic (Execution.describe)


@dataclass(eq=False)  # a member is itself: found in lists by identity
class Member:
    """A variant that a training serves. Variants whose training is identical (models.ModelSpec.
    training_identity: e.g. a soft MoE and the same MoE inferred hard) share one: each member still
    validates under its own inference routing, stops early, checkpoints, and is tested on its own, in
    its own folder, exactly as if it had trained alone."""

    variant: dict
    out: VariantTree
    on_epoch: Callable[[list[dict]], None] = lambda history: None
    model: nn.Module | None = None  # its own model, holding the trained weights after every epoch
    stopper: EarlyStopping | None = None
    history: list[dict] = field(default_factory=list)
    test_experts: torch.Tensor | None = None  # each test sample's first expert after the previous epoch


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Execution:
    """How a training step runs (train.precision, train.compile): the forward pass under autocast, and
    for fp16 a gradient scaler (saved in checkpoints, so that resume is exact); the model compiled with
    torch.compile, or eager when compiling fails at its first call (with a message). Weights, optimizer
    state and evaluation stay float32."""

    def __init__(self, model: nn.Module, settings: TrainSettings, device: torch.device):
        self.model, self.precision, self.device_type = model, settings.precision, device.type
        self.layout = weight_layout()
        self.scaler = torch.amp.GradScaler(device.type) if settings.precision == "fp16" else None
        self.compiled, self._unchecked = False, False
        # DistributedDataParallel around the model when the job is trained by several processes
        self.stepped = data_parallel(model)
        self.forward = self.stepped
        if settings.compile:
            try:
                self.forward, self.compiled, self._unchecked = torch.compile(self.stepped), True, True
            except Exception as error:  # e.g. no compiler backend for this platform
                self._fall_back(error)

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        with autocast(self.precision, self.device_type):
            if not self._unchecked:
                return self.forward(x, y)
            self._unchecked = False
            try:
                return self.forward(x, y)
            except Exception as error:  # compilation happens at the first call
                self._fall_back(error)
                return self.forward(x, y)

    def backward_and_step(self, loss: torch.Tensor, optimizer, grad_clip: float | None) -> None:
        if self.scaler is None:
            loss.backward()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(optimizer)  # clipping sees the true gradients
        if grad_clip:  # one model: its parameters' gradients with a model dimension of 1
            whole, sharded = self.layout.gradients(self.model)
            clip_grad_norms(whole, grad_clip, sharded)
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)  # skipped when a gradient overflowed in fp16
            self.scaler.update()

    def describe(self) -> dict:
        """For results.json: what the step ran with."""
        return {"precision": self.precision, "compiled": self.compiled,
                "deterministic": torch.are_deterministic_algorithms_enabled()}

    def _fall_back(self, error: Exception) -> None:
        print(f"warning: train.compile: torch.compile failed ({type(error).__name__}: "
              f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}); training eagerly instead",
              file=sys.stderr, flush=True)
        self.forward, self.compiled, self._unchecked = self.stepped, False, False


@torch.no_grad()
def clip_grad_norms(grads: list[torch.Tensor], max_norm: float, sharded: list[torch.Tensor] = ()) -> None:
    """nn.utils.clip_grad_norm_ for each of N models at once: `grads` [N, ...] each, model n's gradient
    norm over its slices [n] (the same arithmetic for a model alone, N = 1, and fused). `sharded`: the
    gradients of which each rank holds a part (expert parallelism), whose squares add up over the ranks."""
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads]).norm(dim=0)  # [N]
    if sharded:
        squares = torch.stack([g.flatten(1).square().sum(dim=1) for g in sharded]).sum(dim=0)
        current_ranks().sum([squares])
        norms = (norms.square() + squares).sqrt()
    coefficient = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in [*grads, *sharded]:
        g.mul_(coefficient.view(-1, *[1] * (g.dim() - 1)).to(g.dtype))


def autocast(precision: str, device_type: str):
    """The forward pass's autocast for train.precision (off for fp32)."""
    return torch.autocast(device_type, dtype=AUTOCAST_DTYPES.get(precision), enabled=precision != "fp32")


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool):
    """train.deterministic: deterministic algorithms only, for this training (cuBLAS needs its fixed
    workspace, set before its first use in the process)."""
    if not enabled:
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def train_variant(variant: dict, data: TaskData, settings: TrainSettings, seed: int, out: VariantTree,
                  device: torch.device, stop_requested: Callable[[], bool] = lambda: False,
                  on_epoch: Callable[[list[dict]], None] = lambda history: None,
                  continued_from: dict | None = None) -> dict:
    """Train one variant (resuming from its checkpoint), then test it and write results.json.
    `continued_from`: {"job": key, "epochs": n}, a finished job of the same experiment with fewer epochs
    whose last checkpoint of this variant it starts from."""
    outcome: dict = {}
    train_members([Member(variant, out, on_epoch)], data, settings, seed, device, stop_requested, continued_from,
                  on_finished=lambda member, results, error: outcome.update(results=results, error=error))
    if outcome["error"] is not None:
        raise outcome["error"]
    return outcome["results"]


def train_members(members: list[Member], data: TaskData, settings: TrainSettings, seed: int, device: torch.device,
                  stop_requested: Callable[[], bool], continued_from: dict | None,
                  on_finished: Callable[[Member, dict | None, Exception | None], None]) -> None:
    """Train the members' one network, resuming where their checkpoints are; each member is tested and
    written as soon as its own training ends, then `on_finished(member, results, None)`, or
    `on_finished(member, None, error)` when it failed (a failure of the shared training fails every
    member still training). Members whose checkpoints are at different epochs (a job stopped between
    two members' writes) train one after the other instead: the same results, at the cost of time."""
    starts = {start_epoch(m.out, continued_from, settings, device) for m in members}
    if len(members) > 1 and len(starts) > 1:
        for member in members:
            train_members([member], data, settings, seed, device, stop_requested, continued_from, on_finished)
        return
    with deterministic_algorithms(settings.deterministic):
        fit(members, data, settings, seed, device, stop_requested, continued_from, on_finished)


def start_epoch(out: VariantTree, continued_from: dict | None, settings: TrainSettings, device: torch.device) -> int:
    """The epoch a variant's training starts from: its checkpoint's, else 0, or for a continuation the
    shorter job's checkpoint's (-1 when that is missing: prepare says so). Trainings are fused or
    trained together only when they start at the same epoch."""
    if out.last_checkpoint.exists() and not _damaged(out, settings, device):
        return torch.load(out.last_checkpoint, map_location="cpu", weights_only=False)["next_epoch"]
    if continued_from is None:
        return 0
    shorter = JobTree(out.path.parent).sibling(continued_from["job"]).variant(out.name)
    if not shorter.last_checkpoint.is_file():
        return -1
    return torch.load(shorter.last_checkpoint, map_location="cpu", weights_only=False)["next_epoch"]


def provenance(variant: dict, continued_from: dict | None) -> dict:
    """Where a variant's training starts when not at random, for results.json and status.json."""
    found = {}
    if "init_from" in variant:
        found["init_from"] = variant["init_from"]
    if continued_from is not None:
        found["continued_from"] = continued_from
    return found


@dataclass
class Training:
    """One network's training as its epoch loop starts: the model (every member's checkpoint loaded), its
    optimizer, schedule, step and shuffle, and the epoch to start from."""

    members: list[Member]
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    execution: Execution
    shuffle: torch.Generator
    start_epoch: int


def prepare(members: list[Member], data: TaskData, settings: TrainSettings, seed: int, device: torch.device,
            continued_from: dict | None) -> Training:
    """Build the members' network from the seed and load what it starts from: the members' own checkpoints,
    else the ones of the job they continue, else their init_from weights, else nothing (at random)."""
    task = TASKS[data.task]
    lead = members[0].variant
    layout = weight_layout()
    torch.manual_seed(seed)  # every variant of a job starts from the same seed: paired comparisons
    model = build_model(lead["model"], data.d_in, data.d_out, model_params(lead), data.input_shape).to(device)
    layout.place(model)  # built whole on every rank, from the seed: a rank keeps its experts
    optimizer = make_optimizer(model, settings)
    scheduler = make_scheduler(optimizer, settings)
    execution = Execution(model, settings, device)
    shuffle = torch.Generator().manual_seed(seed)
    # a member of a shared training validates and is tested on a model of its own class; building it
    # must not draw from the training's random numbers
    with torch.random.fork_rng(devices=_rng_devices(device)):
        for member in members:
            if len(members) == 1:
                member.model = model
            else:
                member.model = build_model(member.variant["model"], data.d_in, data.d_out, model_params(member.variant),
                                           data.input_shape).to(device)
                layout.place(member.model)
            member.stopper = EarlyStopping(settings.early_stopping.patience, settings.early_stopping.min_delta,
                                           task.primary_higher_is_better)
    start_epoch = 0
    first = members[0].out
    if first.last_checkpoint.exists():  # every member's checkpoint is at this epoch (train_members)
        for member in members:
            start_epoch, member.history, member.test_experts = load_checkpoint(
                member.out, model, optimizer, scheduler, shuffle, member.stopper, device, execution.scaler)
            write_jsonl(member.out.metrics_file, [metrics_line(r) for r in member.history])  # drop lines after it
    elif continued_from is not None:
        for member in members:
            shorter = JobTree(member.out.path.parent).sibling(continued_from["job"]).variant(member.out.name)
            if not shorter.last_checkpoint.is_file():
                raise FileNotFoundError(f"this job continues {shorter.path}, which has no checkpoint "
                                        f"{shorter.last_checkpoint.name} any more; launch with --force to train from zero")
            start_epoch, member.history, member.test_experts = load_checkpoint(
                shorter, model, optimizer, scheduler, shuffle, member.stopper, device, execution.scaler)
            carry_best_weights(shorter, member.out, model, member.stopper, start_epoch, settings)
            write_jsonl(member.out.metrics_file, [metrics_line(r) for r in member.history])
        # the epochs to come follow this job's learning-rate schedule, for its own number of epochs; the
        # optimizer holds the rate the shorter job's schedule set
        for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * factor(start_epoch)
    else:
        for member in members:
            member.out.metrics_file.unlink(missing_ok=True)
        if "init_from" in lead:
            layout.load_state_dict(model, load_weights(lead["init_from"], device))
    return Training(members, model, optimizer, scheduler, execution, shuffle, start_epoch)


def fit(members: list[Member], data: TaskData, settings: TrainSettings, seed: int, device: torch.device,
        stop_requested: Callable[[], bool], continued_from: dict | None,
        on_finished: Callable[[Member, dict | None, Exception | None], None]) -> None:
    """The epoch loop: train, then for every member validate, checkpoint and `on_epoch(history)`."""
    try:  # building the model and loading what it starts from: a failure here fails every member
        run = prepare(members, data, settings, seed, device, continued_from)
    except Exception as error:
        for member in members:
            on_finished(member, None, error)
        return
    model, optimizer, scheduler, execution = run.model, run.optimizer, run.scheduler, run.execution

    writer = CheckpointWriter()

    def done(member: Member, error: Exception | None = None) -> None:
        training.remove(member)
        writer.close()  # its files are whole before it is tested
        finish_member(member, error, execution.describe(), data, settings, device, continued_from, on_finished)

    training = list(members)
    try:
        for epoch in range(run.start_epoch, settings.epochs):
            for member in [m for m in training if m.stopper.should_stop]:
                done(member)
            if not training:
                break
            started = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            model.set_progress(epoch / settings.epochs)
            try:
                train = train_one_epoch(model, data, optimizer, run.shuffle, settings, stop_requested, execution)
            except StopRequested:
                raise
            except Exception as error:  # the shared training failed: so did every member still training
                for member in list(training):
                    done(member, error)
                return
            scheduler.step()
            state = checkpoint_state(execution.layout.optimizer_state(model, optimizer), scheduler, run.shuffle,
                                     global_rng(), execution.scaler)
            recorded = []
            for member in list(training):
                try:
                    record_epoch(member, model, data, settings, epoch, train, lr, started, state, writer)
                    recorded.append(member)
                except Exception as error:
                    done(member, error)
            writer.flush()  # written while the callbacks and the next epoch run
            for member in recorded:
                member.on_epoch(member.history)
            if stop_requested() and any(not m.stopper.should_stop for m in training) and epoch + 1 < settings.epochs:
                raise StopRequested(f"stopped after epoch {epoch} on request; resumes from the checkpoint")
        for member in list(training):
            done(member)
    finally:
        writer.close()


def finish_member(member: Member, error: Exception | None, execution: dict, data: TaskData, settings: TrainSettings,
                  device: torch.device, continued_from: dict | None,
                  on_finished: Callable[[Member, dict | None, Exception | None], None]) -> None:
    """A member's training ended: test it and write its results (unless it failed), then tell `on_finished`."""
    if error is not None:
        on_finished(member, None, error)
        return
    model = weight_layout().tested_model(member.model)
    if model is None:  # tested by another rank
        on_finished(member, None, None)
        return
    fitted = Fit(model, member.history, member.stopper, provenance(member.variant, continued_from), execution)
    try:
        with torch.random.fork_rng(devices=_rng_devices(device)):  # the others go on training
            results = finish(member.variant, fitted, data, settings, member.out, device)
    except Exception as failure:  # recorded by the caller; the other members go on
        on_finished(member, None, failure)
        return
    on_finished(member, results, None)


def record_epoch(member: Member, model: nn.Module, data: TaskData, settings: TrainSettings, epoch: int, train: dict,
                 lr: float, started: float, state: dict, writer: CheckpointWriter,
                 scores: tuple[dict, torch.Tensor | None] | None = None) -> None:
    """A member's end of epoch: validate, append its metrics line, stop on divergence, keep its best
    weights, and checkpoint (the training's `state` beside the member's own), through `writer`."""
    history = member.history
    history.append(validate(member, model, data, settings, epoch, train, lr, started, scores))
    # not synced: a resume rewrites the metrics from the checkpoint's history
    append_jsonl(member.out.metrics_file, metrics_line(history[-1]), sync=False)
    check_finite(history[-1], epoch)
    weights = weight_layout().state_dict(model)
    if member.stopper.update(history[-1][f"val_{TASKS[data.task].primary}"], epoch):
        writer.write(member.out.best_weights, weights)
    writer.write(member.out.last_checkpoint, {
        "next_epoch": epoch + 1, "model": weights, "early_stopping": asdict(member.stopper),
        "history": history, "test_experts": member.test_experts, **state,
    })


def validate(member: Member, model: nn.Module, data: TaskData, settings: TrainSettings, epoch: int, train: dict,
             lr: float, started: float, scores: tuple[dict, torch.Tensor | None] | None = None) -> dict:
    """A member's line of the epoch: the training's figures, its own validation and routing flips.
    `scores`: its validation figures and test routing when already measured (models trained fused)."""
    if scores is None:
        view = member.model
        if view is not model:
            view.load_state_dict(model.state_dict())
            view.set_progress(epoch / settings.epochs)
        scores = (evaluate(view, data.x_val, data.y_val, data.task, settings.eval_batch_size),
                  first_experts_of_test_set(view, data, settings))
    val, first_experts = scores
    row = {"epoch": epoch, **{f"train_{k}": v for k, v in train.items()}, **{f"val_{k}": v for k, v in val.items()},
           "lr": lr}
    if first_experts is not None and member.test_experts is not None:
        flipped = (first_experts != member.test_experts).float()
        row["test_routing_flip_rate"] = float(flipped.mean())
        if first_experts.dim() > 1 and first_experts.shape[-1] > 1:  # a column per MoE layer
            row.update({f"test_layer{i}_routing_flip_rate": float(rate) for i, rate in
                        enumerate(flipped.reshape(-1, first_experts.shape[-1]).mean(dim=0))})
    member.test_experts = first_experts
    row["seconds"] = time.perf_counter() - started
    return row


def _rng_devices(device: torch.device) -> list:
    return [device] if device.type == "cuda" else []


def finish(variant: dict, fitted: Fit, data: TaskData, settings: TrainSettings, out: VariantTree,
           device: torch.device) -> dict:
    """Test the best weights, write the expert analysis, and results.json last (the completion marker)."""
    task = TASKS[data.task]
    model, history, stopper = fitted.model, fitted.history, fitted.stopper
    if settings.checkpoint == "best":
        model.load_state_dict(torch.load(out.best_weights, map_location=device, weights_only=True))
        tested = TestedWeights.at("best", stopper.best_epoch, settings.epochs, stopper.best)
    else:  # the weights after the last epoch are the ones tested, and the ones best.pt keeps
        tested = TestedWeights.at("last", len(history) - 1, settings.epochs, history[-1][f"val_{task.primary}"])
        save_atomic(out.best_weights, model.state_dict())
    model.set_progress(tested.progress)  # the gate as it was at the tested epoch; serving sets it the same way
    results = test_results(model, data, settings)
    if data.render_inputs is not None:
        save_rendering(model, data, settings, out)
    results.update(write_expert_analysis(model, data, history, settings, out.analysis))
    results = {
        "variant": variant["name"], "model": variant["model"], "params": model_params(variant), "task": data.task,
        "metric": task.primary, "num_parameters": count_parameters(model),
        "epochs_trained": len(history), "best_epoch": stopper.best_epoch, "stopped_early": stopper.should_stop,
        f"best_val_{task.primary}": stopper.best, "tested": tested.to_dict(), **results,
        "train_seconds": sum(r["seconds"] for r in history), "device": str(device), "execution": fitted.execution,
        **({"provenance": fitted.provenance} if fitted.provenance else {}),
    }
    if not settings.save_weights:
        out.best_weights.unlink()
    write_json(out.results_file, results)
    return results


def metrics_line(row: dict) -> dict:
    """An epoch's line in metrics.jsonl: the per-batch gate shares stay in the checkpoint's history
    (and analysis/gates_per_batch.csv), so the metrics file stays small enough to aggregate fast."""
    return {k: v for k, v in row.items() if k != "train_batch_expert_load"}


def check_finite(row: dict, epoch: int) -> None:
    """Stop a diverging variant with a clear error rather than train on (or fail deep inside torch with)
    NaN weights. The epoch's line stays in metrics.jsonl, showing the loss that diverged."""
    for key in ("train_loss", "val_loss"):
        if not math.isfinite(row[key]):
            words = key.replace("_", " ").replace("val ", "validation ")
            raise TrainingDiverged(f"diverged at epoch {epoch} ({words} {row[key]})")


@torch.no_grad()
def first_experts_of_test_set(model, data: TaskData, settings: TrainSettings) -> torch.Tensor | None:
    """The first expert of every test sample under the model's inference routing (None without experts;
    language models: of every test token in every MoE layer, [N, T, L]); comparing it between epochs
    gives the routing flip rate. Evaluation draws no random numbers, so training is unchanged by it."""
    return first_experts(predict(model, data.x_test, data.task, settings.eval_batch_size))


def first_experts(predictions) -> torch.Tensor | None:
    return None if predictions.experts is None else predictions.experts[..., 0].to(torch.int16)


def train_one_epoch(model, data: TaskData, optimizer, shuffle, settings: TrainSettings,
                    stop_requested: Callable[[], bool] = lambda: False, execution: Execution | None = None) -> dict:
    execution = execution or Execution(model, settings, data.x_train.device)
    task = TASKS[data.task]
    model.train()
    x, y = data.x_train, data.y_train
    order = torch.randperm(len(x), generator=shuffle).to(x.device)
    sums = EpochSums(data.task)
    ranks = current_ranks()
    for start in range(0, len(x), settings.batch_size):
        if stop_requested():  # the epoch is redone from the checkpoint on resume, with the same shuffle
            raise StopRequested("stopped during an epoch on request; resumes from the checkpoint")
        index = order[start : start + settings.batch_size]
        if ranks is not None:  # this process's slice of the batch (train/ranks.py)
            index, share = ranks.share(index)
        out = execution(x[index], y[index])
        task_loss = task.loss(out.y.float(), y[index])
        loss = task_loss + sum(out.aux_losses.values())
        if ranks is not None:
            loss = loss * share
        optimizer.zero_grad(set_to_none=True)
        execution.backward_and_step(loss, optimizer, settings.grad_clip)
        model.after_step()
        sums.add(out, y[index], task_loss)
    if ranks is not None:  # the epoch's figures are those of every rank's samples
        sums.sum_over(ranks)
    return sums.row()


class EpochSums:
    """A model's sums over the batches of an epoch (loss, task metrics, auxiliary losses, expert counts),
    kept on the device until `row` (one transfer per epoch)."""

    def __init__(self, task_name: str):
        self.task_name = task_name
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.batch_loads: list[torch.Tensor] = []  # per batch: first choices of each expert
        self.batch_choices: list[int] = []  # per batch: how many first choices (samples x MoE layers)

    def add(self, out, targets: torch.Tensor, task_loss: torch.Tensor) -> None:
        n = len(targets)
        self.count += n
        batch = batch_stats(self.task_name, out.y.detach().float(), targets)
        batch["loss"] = task_loss.detach() * n
        for name, value in out.aux_losses.items():
            batch[f"aux_{name}"] = value.detach() * n
        for name, value in out.metrics.items():
            batch[f"metric_{name}"] = value.detach().float() * n
        routings = out.routings()
        for i, routing in enumerate(routings):
            chosen = routing.expert_index[:, 0] if routing.expert_index is not None else routing.gate_probs.argmax(dim=1)
            counts = torch.bincount(chosen, minlength=routing.gate_probs.shape[1]).float()
            batch[f"expert_count_{i}"] = counts
            # MaxVio's load: what each expert processed (every assignment, after capacity), else first choices
            batch[f"assignment_count_{i}"] = routing.expert_load.float() if routing.expert_load is not None else counts
            batch[f"gate_prob_sum_{i}"] = routing.gate_probs.detach().sum(dim=0)
        if routings:
            self.batch_loads.append(sum(batch[f"expert_count_{i}"] for i in range(len(routings))))
            self.batch_choices.append(len(chosen) * len(routings))
        for name, value in batch.items():
            self.sums[name] = self.sums[name] + value if name in self.sums else value

    def sum_over(self, ranks) -> None:
        """Add up every rank's sums (train/ranks.py): the figures of all the ranks' samples."""
        device = next(iter(self.sums.values())).device
        count = torch.tensor([self.count], device=device)
        loads = [torch.stack(self.batch_loads), torch.tensor(self.batch_choices, device=device)] if self.batch_loads else []
        ranks.sum([count, *self.sums.values(), *loads])
        self.count = int(count)
        if loads:
            self.batch_loads, self.batch_choices = list(loads[0]), loads[1].tolist()

    def row(self) -> dict:
        """The epoch's training figures."""
        count = self.count
        host = {k: v.tolist() for k, v in self.sums.items()}
        row = {"loss": host.pop("loss") / count, **finish_metrics(self.task_name, host, count)}
        row.update({k: v / count for k, v in host.items() if k.startswith("aux_")})
        row.update({k[len("metric_"):]: v / count for k, v in host.items() if k.startswith("metric_")})
        if self.batch_loads:
            row.update(routing_figures(host))
            choices = torch.tensor(self.batch_choices, device=self.batch_loads[0].device).unsqueeze(1)
            row["batch_expert_load"] = (torch.stack(self.batch_loads) / choices).tolist()
        return row


def routing_figures(host: dict) -> dict:
    """An epoch's routing figures from its per-layer sums. With several MoE layers, expert_load and
    gate_mean are averaged over the layers and the balance figures computed from that average, MaxVio
    is the worst layer's, and every layer has its own figures as layer<i>_<name>."""
    layers = sum(1 for name in host if name.startswith("expert_count_"))
    figures = []
    for i in range(layers):
        counts = host[f"expert_count_{i}"]
        tokens = sum(counts)
        load = [c / tokens for c in counts]
        figures.append({"expert_load": load, "gate_mean": [p / tokens for p in host[f"gate_prob_sum_{i}"]],
                        **routing_balance(load), "max_vio": max_violation(host[f"assignment_count_{i}"])})
    if layers == 1:
        return figures[0]
    load = [sum(f["expert_load"][e] for f in figures) / layers for e in range(len(figures[0]["expert_load"]))]
    gate_mean = [sum(f["gate_mean"][e] for f in figures) / layers for e in range(len(figures[0]["gate_mean"]))]
    row = {"expert_load": load, "gate_mean": gate_mean, **routing_balance(load),
           "max_vio": max(f["max_vio"] for f in figures)}
    for i, layer in enumerate(figures):
        row.update({f"layer{i}_{name}": value for name, value in layer.items()
                    if name in ("load_cv", "dead_expert_fraction", "effective_experts", "max_vio")})
    return row


def routing_balance(load: list[float]) -> dict:
    """Balance of the first-choice load (each expert's share of the epoch's training samples): load CV,
    normalised entropy (1 = perfectly balanced), the collapsed experts (under 1 % of the samples), the
    share of experts that are dead (collapsed: the same 1 % rule, zero included), and the effective
    number of experts exp(entropy) (E when balanced, 1 when one expert takes everything)."""
    shares = torch.tensor(load, dtype=torch.float64)
    used = shares[shares > 0]
    entropy = float(-(used * used.log()).sum())
    collapsed = [e for e, s in enumerate(load) if s < 0.01]
    return {"load_cv": float(shares.std(unbiased=False) / shares.mean()) if shares.mean() > 0 else 0.0,
            "load_entropy": entropy / math.log(len(load)) if len(load) > 1 else 1.0, "collapsed_experts": collapsed,
            "dead_expert_fraction": len(collapsed) / len(load), "effective_experts": math.exp(entropy)}


def max_violation(assignments: list[float]) -> float:
    """MaxVio (DeepSeek-V3): the most loaded expert's excess over the mean load, counting every
    (sample, expert) pair an expert processed in the epoch, all k of a sample's; 0 when balanced."""
    mean = sum(assignments) / len(assignments)
    return max(assignments) / mean - 1 if mean > 0 else 0.0


@torch.no_grad()
def save_rendering(model, data: TaskData, settings: TrainSettings, out: VariantTree) -> None:
    """Save the model's prediction for every pixel as reconstruction.png, next to the target (image_fit)."""
    import matplotlib.image

    model.eval()
    bs = settings.eval_batch_size
    pixels = torch.cat([model(data.render_inputs[i : i + bs]).y for i in range(0, len(data.render_inputs), bs)])
    for path, values in ((out.reconstruction, pixels), (out.target_image, data.render_targets)):
        image = values.clamp(0, 1).reshape(data.render_shape).cpu().numpy()
        atomic_write(path, lambda f: matplotlib.image.imsave(f, image, format="png"), mode="wb")


def make_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                               weight_decay=settings.weight_decay)
    cls = torch.optim.AdamW if settings.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)


def make_scheduler(optimizer, settings: TrainSettings) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-epoch learning-rate factor: linear warmup, then constant, cosine to zero, or x0.1 steps."""
    epochs, warmup = settings.epochs, settings.warmup_epochs

    def factor(epoch: int) -> float:
        if epoch < warmup:
            return (epoch + 1) / (warmup + 1)
        if settings.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / max(1, epochs - warmup)))
        if settings.schedule == "step":
            return 0.1 ** ((epoch - warmup) // settings.step_every)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def carry_best_weights(shorter: VariantTree, out: VariantTree, model, stopper: EarlyStopping, start_epoch: int,
                       settings: TrainSettings) -> None:
    """A continuation starts with the best weights (and score, in `stopper`) of the job it continues:
    an epoch of its own replaces them only when it is better."""
    if shorter.best_weights.is_file():
        save_atomic(out.best_weights, torch.load(shorter.best_weights, map_location="cpu", weights_only=True))
    elif stopper.best_epoch == start_epoch - 1:  # the best weights are the checkpoint's
        save_atomic(out.best_weights, weight_layout().state_dict(model))
    elif settings.checkpoint == "best":
        raise FileNotFoundError(f"this job continues {shorter.path}, whose best weights (epoch {stopper.best_epoch}) "
                                f"were not kept ({shorter.best_weights.name} is missing: save_weights: false?); "
                                f"launch with --force to train from zero")


def _damaged(out: VariantTree, settings: TrainSettings, device: torch.device) -> bool:
    """Whether the variant's checkpoints to resume from cannot be loaded (empty, truncated, garbage);
    then they are set aside with a warning and the variant trains from zero."""
    needed = [out.last_checkpoint] + ([out.best_weights] if settings.checkpoint == "best" else [])
    problems = {}
    for path in needed:
        try:
            state = torch.load(path, map_location=device, weights_only=path == out.best_weights)
            if not isinstance(state, dict) or (path == out.last_checkpoint and "next_epoch" not in state):
                raise ValueError("not a checkpoint of this program")
        except Exception as error:  # torch.load raises many kinds: EOFError, UnpicklingError, RuntimeError...
            problems[path] = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    if not problems:
        return False
    for path in needed:
        if path.exists():
            aside = set_aside(path)
            why = f"cannot be loaded ({problems[path]})" if path in problems else "goes with it"
            print(f"warning: {path} {why}; set aside as {aside.name}, training {out.name} again from zero",
                  file=sys.stderr, flush=True)
    return True


def save_atomic(path, obj) -> None:
    atomic_write(path, lambda f: torch.save(own_storage(obj), f), mode="wb")


def own_storage(obj):
    """`obj` with every tensor that views a larger one (a fused model's slice) copied: torch.save writes
    a view's whole storage."""
    if isinstance(obj, torch.Tensor):
        return obj.clone() if obj.untyped_storage().nbytes() > obj.numel() * obj.element_size() else obj
    if isinstance(obj, dict):
        return {k: own_storage(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(own_storage(v) for v in obj)
    return obj


def checkpoint_state(optimizer_state: dict, scheduler, shuffle: torch.Generator, rng: dict, scaler=None) -> dict:
    """What a checkpoint holds of a training besides each member's own: optimizer, schedule, random
    number generators (`rng`: torch's, for dropout and gate noise, as `global_rng` gives them) and the
    fp16 gradient scaler."""
    state = {"optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
             "rng": {**rng, "shuffle": shuffle.get_state()}}
    if scaler is not None:  # fp16: the loss scale and its growth tracker
        state["grad_scaler"] = scaler.state_dict()
    return state


def global_rng() -> dict:
    """torch's default generators: the CPU's, and every GPU's."""
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


class CheckpointWriter:
    """Writes a training's checkpoints (atomically, synced to disk) on a thread of its own, in order:
    the next epoch trains while the last one's files are written. What is handed over is copied
    first, since training goes on changing it. `wait()` returns once every write asked for is on disk
    and raises the error of one that failed; the epoch loop waits before testing, before a new epoch's
    writes (at most one epoch in flight) and before it returns or raises, so that whoever reads the
    files next (a resume, the test, another worker) finds them whole."""

    def __init__(self):
        self._pending: list[tuple[Path, object]] = []
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def write(self, path: Path, obj) -> None:
        self._pending.append((path, _snapshot(obj)))

    def flush(self) -> None:
        """Start writing what was handed over since the last flush, after the writes before it."""
        self.wait()
        writes, self._pending = self._pending, []
        if writes:
            self._thread = threading.Thread(target=self._run, args=(writes,), name="checkpoint-writer", daemon=True)
            self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        """Write everything handed over, and wait for it."""
        self.flush()
        self.wait()

    def _run(self, writes: list[tuple[Path, object]]) -> None:
        try:
            for path, obj in writes:
                save_atomic(path, obj)
        except BaseException as error:  # raised by wait(), in the training's thread
            self._error = error


def _snapshot(obj):
    """A copy of every tensor in `obj` (on the CPU, each owning its storage)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_snapshot(v) for v in obj)
    return obj


def load_checkpoint(out: VariantTree, model, optimizer, scheduler, shuffle, stopper,
                    device, scaler=None) -> tuple[int, list[dict], torch.Tensor | None]:
    state = torch.load(out.last_checkpoint, map_location=device, weights_only=False)
    layout = weight_layout()
    layout.load_state_dict(model, state["model"])
    if scaler is not None and "grad_scaler" in state:
        scaler.load_state_dict(state["grad_scaler"])
    layout.load_optimizer_state(model, optimizer, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    for key, value in state["early_stopping"].items():
        setattr(stopper, key, value)
    torch.set_rng_state(state["rng"]["torch"].cpu())
    shuffle.set_state(state["rng"]["shuffle"].cpu())
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
    test_experts = state.get("test_experts")  # absent from older checkpoints
    return state["next_epoch"], state["history"], None if test_experts is None else test_experts.cpu()


def load_weights(init_from: dict, device: torch.device) -> dict:
    """The model weights init_from names (a best.pt, or the model of a last.pt checkpoint), after checking
    that they are the ones the job's key was made from."""
    path = Path(init_from["path"])
    digest = file_sha256(path)
    if digest != init_from["sha256"]:
        raise ValueError(f"init_from: {path} changed since the experiment was launched (sha256 {digest[:12]}, "
                         f"expected {init_from['sha256'][:12]}); launch again to start from the weights it holds now")
    state = torch.load(path, map_location=device, weights_only=True)
    return state["model"] if "next_epoch" in state else state


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"train.device is {name!r} but no CUDA device is visible on this machine")
    return torch.device(name)
