"""Fused training (`local.fuse`, `slurm.fuse`): the same network trained for several jobs at once, as
one model with a leading model dimension (models/fused.py).

Each job's share is prepared exactly as if it trained alone (`trainer.prepare`: its model built from its
own seed, its checkpoint or continuation loaded), then the models are fused: one optimizer over the
stacked parameters (Adam, AdamW and SGD update each element on its own, so this is each model's own
optimizer), gradients clipped per model, each model with its own shuffle and its own generator for
dropout and gate noise. After every epoch each member is validated, stopped early, checkpointed and,
when done, tested and written through the same functions as unfused training: its checkpoint is the
one it would have written alone, so a fused training resumes unfused and the reverse. A model whose
members are all done (stopped early, diverged) rides along without a loss until the group ends.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from moelab.data.task_data import TaskData
from moelab.models.fused import FusedModel
from moelab.train.evaluate import evaluate_each, predict_each
from moelab.train.settings import TrainSettings
from moelab.train.tasks import TASKS
from moelab.train.trainer import (CheckpointWriter, EpochSums, Member, StopRequested, Training, autocast,
                                  checkpoint_state, clip_grad_norms, deterministic_algorithms, finish_member,
                                  first_experts, make_optimizer, make_scheduler, prepare, record_epoch)


@dataclass
class FusedShare:
    """One job's part of a fused training: the members (its variants that train this network), its data,
    seed and continuation."""

    members: list[Member]
    data: TaskData
    seed: int
    continued_from: dict | None


@dataclass(frozen=True)
class FusedData:
    """Every model's data in a fused training, in model order, and the splits a fused epoch reads that
    all of them share (jobs that differ only in their seed share what the seed does not draw: a fixed
    test set, sometimes everything). Decided once, where the training starts, not every epoch."""

    datas: list[TaskData]
    shared: frozenset[str]  # the TaskData fields equal in every model's data
    # split -> stacked split, made once: validation reads the same stack every epoch
    stacks: dict[str, torch.Tensor] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, datas: list[TaskData]) -> FusedData:
        first = datas[0]
        return cls(datas, frozenset(split for split in ("x_train", "y_train", "x_val", "y_val", "x_test")
                                    if all(_same(getattr(d, split), getattr(first, split)) for d in datas[1:])))

    @property
    def task(self) -> str:
        return self.datas[0].task

    def shares(self, *splits: str) -> bool:
        return all(split in self.shared for split in splits)

    def stacked(self, split: str) -> torch.Tensor:
        """The split of every model's data, [N, ...]: one tensor seen N times when they share it."""
        if split not in self.stacks:
            first = getattr(self.datas[0], split)
            self.stacks[split] = (first.unsqueeze(0).expand(len(self.datas), *first.shape) if self.shares(split)
                                  else torch.stack([getattr(d, split) for d in self.datas]))
        return self.stacks[split]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a is b or torch.equal(a, b)


def settings_refusal(settings: TrainSettings) -> str | None:
    """Why jobs with these settings train unfused; None when they can be fused."""
    if settings.precision == "fp16":
        return "train.precision: fp16 (its loss scale would skip the step of every model when one overflows)"
    if settings.compile:
        return "train.compile: true (fused training runs eagerly)"
    return None


def train_fused(shares: list[FusedShare], settings: TrainSettings, device: torch.device,
                stop_requested: Callable[[], bool], on_finished: Callable[[Member, dict | None, Exception | None], None]) -> None:
    """Train the shares' networks as one. They have one architecture and data of one size, and every
    member's checkpoint is at the same epoch (the caller groups them so). A share that cannot be
    prepared fails alone, a member that diverges fails alone; a failure of the fused step fails every
    member still training."""
    with deterministic_algorithms(settings.deterministic):
        runs: list[tuple[FusedShare, Training, torch.Generator, torch.Tensor]] = []
        for share in shares:
            try:
                run = prepare(share.members, share.data, settings, share.seed, device, share.continued_from)
            except Exception as error:
                for member in share.members:
                    on_finished(member, None, error)
                continue
            # torch's generators now hold what this model's training would draw from, alone
            runs.append((share, run, _device_generator(device), torch.get_rng_state()))
        if runs:
            _fit(runs, settings, device, stop_requested, on_finished)


def _fit(runs, settings: TrainSettings, device: torch.device, stop_requested, on_finished) -> None:
    shares = [share for share, *_ in runs]
    models = [run.model for _, run, *_ in runs]
    generators = [generator for *_, generator, _ in runs]
    cpu_states = [cpu for *_, cpu in runs]
    shuffles = [run.shuffle for _, run, *_ in runs]
    data = FusedData.of([share.data for share in shares])
    fused = FusedModel(models)
    fused.generators = generators
    optimizer = make_optimizer(fused, settings)
    scheduler = make_scheduler(optimizer, settings)
    optimizer.load_state_dict(stacked_optimizer_state([run.optimizer.state_dict() for _, run, *_ in runs]))
    scheduler.load_state_dict(runs[0][1].scheduler.state_dict())
    execution = {**runs[0][1].execution.describe(), "fused_models": len(runs)}
    training = [list(share.members) for share in shares]
    # validation is fused too: for each member of the training (a variant sharing it validates on a model
    # of its own class), its model in every job as one; the training's own where it validates on it
    viewers = []
    for i in range(len(shares[0].members)):
        views = [share.members[i].model for share in shares]
        viewers.append(fused if all(v is m for v, m in zip(views, models)) else FusedModel(views))

    writer = CheckpointWriter()

    def done(n: int, member: Member, error: Exception | None = None) -> None:
        training[n].remove(member)
        writer.close()  # its files are whole before it is tested
        finish_member(member, error, execution, shares[n].data, settings, device, shares[n].continued_from, on_finished)

    try:
        for epoch in range(runs[0][1].start_epoch, settings.epochs):
            for n, members in enumerate(training):
                for member in [m for m in members if m.stopper.should_stop]:
                    done(n, member)
            active = [bool(members) for members in training]
            if not any(active):
                break
            started = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            fused.set_progress(epoch / settings.epochs)
            try:
                rows = train_fused_epoch(fused, data, shuffles, optimizer, settings, active, stop_requested)
            except StopRequested:
                raise
            except Exception as error:  # the fused step failed: so did every member still training
                for n, members in enumerate(training):
                    for member in list(members):
                        done(n, member, error)
                return
            scheduler.step()
            optimizer_state = optimizer.state_dict()
            scores = {}
            for i, viewer in enumerate(viewers):
                live = [n for n in range(len(shares)) if shares[n].members[i] in training[n]]
                if not live:
                    continue
                if viewer is not fused:
                    for n in live:
                        shares[n].members[i].model.load_state_dict(models[n].state_dict())
                    viewer.set_progress(epoch / settings.epochs)
                measured = score_each(viewer, data, settings)
                scores.update({(n, i): measured[n] for n in live})
            recorded = []
            for n, members in enumerate(training):
                if not members:
                    continue
                rng = ({"torch": generators[n].get_state(), "cuda": None} if device.type == "cpu"
                       else {"torch": cpu_states[n], "cuda": [generators[n].get_state()]})
                state = checkpoint_state(optimizer_state_of(optimizer_state, n), scheduler, shuffles[n], rng)
                for member in list(members):
                    try:
                        record_epoch(member, models[n], shares[n].data, settings, epoch, rows[n], lr, started, state,
                                     writer, scores[(n, shares[n].members.index(member))])
                        recorded.append(member)
                    except Exception as error:
                        done(n, member, error)
            writer.flush()  # written while the callbacks and the next epoch run
            for member in recorded:
                member.on_epoch(member.history)
            if (stop_requested() and any(not m.stopper.should_stop for ms in training for m in ms)
                    and epoch + 1 < settings.epochs):
                raise StopRequested(f"stopped after epoch {epoch} on request; resumes from the checkpoint")
        for n, members in enumerate(training):
            for member in list(members):
                done(n, member)
    finally:
        writer.close()


def train_fused_epoch(fused: FusedModel, data: FusedData, shuffles: list[torch.Generator], optimizer,
                      settings: TrainSettings, active: list[bool], stop_requested: Callable[[], bool]) -> list[dict | None]:
    """One epoch of every model, each on its own order of its own data; the rows of the active models
    (as trainer.train_one_epoch gives them), None for the others."""
    task = TASKS[data.task]
    fused.train()
    datas = data.datas
    x_all, y_all = datas[0].x_train, datas[0].y_train
    device = x_all.device
    one_dataset = data.shares("x_train", "y_train")
    order = torch.stack([torch.randperm(len(d.x_train), generator=g) for d, g in zip(datas, shuffles)]).to(device)
    live = torch.tensor(active, device=device)
    sums = [EpochSums(data.task) if on else None for on in active]
    for start in range(0, len(x_all), settings.batch_size):
        if stop_requested():  # the epoch is redone from the checkpoints on resume, with the same shuffles
            raise StopRequested("stopped during an epoch on request; resumes from the checkpoint")
        index = order[:, start : start + settings.batch_size]  # [N, B]
        if one_dataset:
            x, y = x_all[index], y_all[index]
        else:
            x = torch.stack([d.x_train[i] for d, i in zip(datas, index)])
            y = torch.stack([d.y_train[i] for d, i in zip(datas, index)])
        with autocast(settings.precision, device.type):
            out = fused(x, y)
        loss = 0.0
        for n, model_sums in enumerate(sums):
            if model_sums is None:  # done: it trains on without a loss until the group ends
                continue
            mine = out.of_model(n)
            task_loss = task.loss(mine.y.float(), y[n])
            loss = loss + task_loss + sum(mine.aux_losses.values())
            model_sums.add(mine, y[n], task_loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip:
            clip_grad_norms([p.grad for p in fused.parameters() if p.grad is not None], settings.grad_clip)
        optimizer.step()
        fused.after_step(live)
    return [None if s is None else s.row() for s in sums]


def score_each(viewer: FusedModel, data: FusedData, settings: TrainSettings) -> list[tuple[dict, torch.Tensor | None]]:
    """Each model's validation figures and first experts of its test set (trainer.validate), from one
    fused pass per batch."""
    viewer.eval()

    def outputs_of(batch: torch.Tensor) -> list:
        out = viewer(batch)
        return [out.of_model(n) for n in range(len(viewer))]

    val = evaluate_each(outputs_of, data.stacked("x_val"), data.stacked("y_val"), data.task, settings.eval_batch_size)
    tested = predict_each(outputs_of, data.stacked("x_test"), data.task, settings.eval_batch_size)
    return [(v, first_experts(p)) for v, p in zip(val, tested)]


def stacked_optimizer_state(states: list[dict]) -> dict:
    """One optimizer state for the stacked parameters from each model's own (same parameter order): per
    parameter tensors stacked, scalars (the step count, equal for models at the same epoch) kept."""
    first = states[0]
    return {"param_groups": first["param_groups"], "state": {
        i: {k: torch.stack([s["state"][i][k] for s in states]) if _per_element(v) else v for k, v in entry.items()}
        for i, entry in first["state"].items()}}


def optimizer_state_of(state: dict, n: int) -> dict:
    """Model n's own optimizer state, as its optimizer alone would hold it."""
    return {"param_groups": state["param_groups"], "state": {
        i: {k: v[n] if _per_element(v) else v for k, v in entry.items()} for i, entry in state["state"].items()}}


def _per_element(value) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0


def _device_generator(device: torch.device) -> torch.Generator:
    """A generator in the state of torch's default one for `device`."""
    generator = torch.Generator(device)
    generator.set_state(torch.get_rng_state() if device.type == "cpu" else torch.cuda.get_rng_state(device))
    return generator
