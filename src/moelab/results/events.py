"""TensorBoard event files of a training variant, written while it trains (tensorboardX).

    <variant>/tensorboard/<run>/events.out.tfevents.*

`<run>` names the variant and its grid values, so `tensorboard --logdir experiments/<name>` lists
every run as `jobs/<key>/<variant>/tensorboard/<variant>,<axis>=<value>,...`. Each epoch's line of
metrics.jsonl becomes scalars at step = epoch (`train_loss` -> `train/loss`, `val_acc` -> `val/acc`,
`lr`, the router's health under `train/`), the per-expert shares (expert load, mean gate) become
histograms over the expert index, and the hyperparameters (grid values, variant parameters, train
and data settings) go to the HParams tab. The test results are scalars at the last epoch when the
variant finishes.

A resumed variant rewrites its event files from the history its checkpoint holds: what an earlier
attempt wrote past that checkpoint (or never flushed) is gone, so no step appears twice and none is
missing. An event file is one append-only file per writer, safe beside the job's own files on a
shared file system.
"""

from __future__ import annotations

import re
import shutil

from moelab.results.finished import variant_parameters
from moelab.results.records import JobSpec
from moelab.results.tree import VariantTree

# metrics.jsonl keys holding one value per expert: a histogram over the expert index
PER_EXPERT = ("train_expert_load", "train_gate_mean")
SPLITS = ("train", "val", "test")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+@-]+")
RUN_NAME_MAX = 120  # a folder name must stay well under the file systems' 255 bytes


def available() -> bool:
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        return False
    return True


def variant_events(out: VariantTree, job_doc: dict) -> "VariantEvents | None":
    """The events writer of a variant of the job whose config.json is `job_doc`; None when its
    `report.tensorboard` is false or tensorboardX is not installed."""
    if not job_doc.get("report", {}).get("tensorboard", True) or not available():
        return None
    return VariantEvents(out, JobSpec.from_dict(job_doc, out.path.parent.name))


def run_name(variant: str, grid_values: dict) -> str:
    """`<variant>,<axis>=<value>,...` as a folder name: axes by their last dotted part where that is
    unambiguous (`variants.*.num_experts` -> `num_experts`), characters a path or a shell would
    trip on replaced by `_`."""
    short = [axis.rsplit(".", 1)[-1] for axis in grid_values]
    names = [s if short.count(s) == 1 else axis for s, axis in zip(short, grid_values)]
    parts = [variant] + [f"{name}={value}" for name, value in zip(names, grid_values.values())]
    return ",".join(_UNSAFE.sub("_", part) for part in parts).strip("._")[:RUN_NAME_MAX] or "run"


def scalar_tag(key: str) -> str:
    """The TensorBoard tag of a metrics.jsonl key: its split becomes the tag's group."""
    split, _, name = key.partition("_")
    return f"{split}/{name}" if split in SPLITS and name else key


class VariantEvents:
    """The `on_epoch` callback that writes a variant's history as TensorBoard events; `close(results)`
    adds the test results and marks the run finished in the HParams tab."""

    def __init__(self, out: VariantTree, spec: JobSpec):
        self.out, self.spec = out, spec
        self.folder = out.tensorboard_dir / run_name(out.name, spec.grid_values)
        self.writer = None
        self.written = 0  # epochs of the history already in the event file

    def __call__(self, history: list[dict]) -> None:
        if self.writer is None:
            self._open()
        for row in history[self.written:]:
            self._write_epoch(row)
        self.written = len(history)
        self.writer.flush()  # an epoch is on disk once the callback returns: a killed job loses none

    def close(self, results: dict | None) -> None:
        """`results`: the variant's results.json content, None when it failed."""
        if self.writer is None:
            return
        from tensorboardX.proto.api_pb2 import Status
        from tensorboardX.summary import hparams

        step = self.written - 1
        for key, value in (results or {}).items():
            if key.startswith("test_") and _is_number(value):
                self.writer.add_scalar(scalar_tag(key), value, step)
        _, _, session_end = hparams({}, {})
        if results is None:
            _set_session_status(session_end, Status.Value("STATUS_FAILURE"))
        self.writer.file_writer.add_summary(session_end)
        self.release()

    def release(self) -> None:
        """Close the event file as it is (a variant interrupted or pruned: its run stays unfinished)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _open(self) -> None:
        from tensorboardX import SummaryWriter
        from tensorboardX.summary import hparams

        # a training starts from its checkpoint's history (or from nothing): earlier event files go
        shutil.rmtree(self.out.tensorboard_dir, ignore_errors=True)
        self.writer = SummaryWriter(logdir=str(self.folder), flush_secs=3600)
        # no experiment summary: TensorBoard then gathers the columns from every run's own
        # hyperparameters, so variants with parameters of their own all show them
        _, session_start, _ = hparams(variant_parameters(self.spec, self.out.name), {})
        self.writer.file_writer.add_summary(session_start)
        self.written = 0

    def _write_epoch(self, row: dict) -> None:
        step = int(row["epoch"])
        for key, value in row.items():
            if key == "epoch":
                continue
            if key in PER_EXPERT and isinstance(value, list) and value:
                self._write_per_expert(scalar_tag(key), value, step)
            elif _is_number(value):
                self.writer.add_scalar(scalar_tag(key), value, step)

    def _write_per_expert(self, tag: str, shares: list[float], step: int) -> None:
        """Bucket e (from e - 0.5 to e + 0.5) holds expert e's share."""
        experts = range(len(shares))
        self.writer.add_histogram_raw(
            tag, min=0, max=len(shares) - 1, num=sum(shares), sum=sum(e * s for e, s in zip(experts, shares)),
            sum_squares=sum(e * e * s for e, s in zip(experts, shares)),
            bucket_limits=[e + 0.5 for e in experts], bucket_counts=list(shares), global_step=step)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _set_session_status(summary, status: int) -> None:
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    metadata = summary.value[0].metadata.plugin_data
    content = HParamsPluginData.FromString(metadata.content)
    content.session_end_info.status = status
    metadata.content = content.SerializeToString()
