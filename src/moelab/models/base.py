"""What every model is: `forward(x, targets=None)` returns a `ModelOutput`, so the trainer and the
analysis treat a dense baseline and any MoE alike; and the counting every model shares."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn


@dataclass
class Routing:
    """One MoE layer's routing of a batch's tokens (see ModelOutput)."""

    gate_probs: torch.Tensor | None  # [T, E]
    expert_index: torch.Tensor | None  # [T, k]
    expert_weights: torch.Tensor | None  # [T, k]
    expert_load: torch.Tensor | None  # [E]


@dataclass
class ModelOutput:
    y: torch.Tensor  # [B, d_out] prediction (logits or regression values); [B, T, V] for language models
    # already weighted terms that the trainer adds to the task loss, by name (logged per epoch)
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    gate_probs: torch.Tensor | None = None  # [B, E] router probabilities, for MoE models
    expert_index: torch.Tensor | None = None  # [B, k] experts each sample was sent to (sparse routing)
    expert_weights: torch.Tensor | None = None  # [B, k] their mixing weights
    # per-batch values to watch that are not losses (e.g. share of tokens dropped), averaged per epoch
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    # [E] the samples each expert processed (after capacity; expert choice: c each), for sparse routing
    expert_load: torch.Tensor | None = None
    # every MoE layer's routing, for models with several (the fields above are then the first's); the
    # tokens are the batch's positions, row b * T + t for position t of sequence b
    layers: list[Routing] = field(default_factory=list)

    def of_model(self, n: int) -> ModelOutput:
        """Model n's output, from the output of models trained as one (models/fused.py: fields [N, ...])."""
        pick = lambda t: None if t is None else t[n]  # noqa: E731
        return ModelOutput(
            y=self.y[n], aux_losses={k: v[n] for k, v in self.aux_losses.items()}, gate_probs=pick(self.gate_probs),
            expert_index=pick(self.expert_index), expert_weights=pick(self.expert_weights),
            metrics={k: v[n] for k, v in self.metrics.items()}, expert_load=pick(self.expert_load),
            layers=[Routing(pick(r.gate_probs), pick(r.expert_index), pick(r.expert_weights), pick(r.expert_load))
                    for r in self.layers])

    def routings(self) -> list[Routing]:
        """Every MoE layer's routing: one for a single-layer model, none without experts."""
        if self.layers:
            return self.layers
        if self.gate_probs is None:
            return []
        return [Routing(self.gate_probs, self.expert_index, self.expert_weights, self.expert_load)]


class Model(nn.Module):
    """Base of every registered model: `forward(x, targets=None)` returns a ModelOutput.

    `targets` are given during training only (label-guided routing uses them). Models that can be
    evaluated with more than one routing (an MoE trained soft and inferred hard) list the extra
    ones in `routing_modes()`; the trainer evaluates the test set under each.
    """

    def routing_modes(self) -> list[str]:
        return []

    def set_progress(self, fraction: float) -> None:
        """Called at the start of every epoch with the share of training done (for annealing)."""

    def after_step(self) -> None:
        """Called after every optimizer step (bias balancing moves its biases here, without gradients)."""

    @property
    def batch_dependent(self) -> bool:
        """Whether a sample's prediction depends on the other samples of its batch (expert choice)."""
        return False

    def active_parameters(self) -> int:
        """Parameters that take part in predicting one sample under the current routing."""
        return count_parameters(self)

    def expert_outputs(self, x: torch.Tensor) -> torch.Tensor | None:
        """Each expert's own prediction for each sample, [B, E, d_out]; None without experts."""
        return None

    def assigned_experts(self, targets: torch.Tensor) -> torch.Tensor | None:
        """The expert each sample is meant to go to (label-guided routing); None otherwise."""
        return None

    def flops_per_sample(self, d_in: int) -> int:
        """Multiply-adds x 2 of the linear and convolution layers for one sample."""
        return count_flops(self, d_in)

    @contextlib.contextmanager
    def use_routing(self, mode: str | None) -> Iterator[None]:
        """Run under routing `mode`, one of `routing_modes()`; None: the model's own."""
        if mode is not None:
            raise ValueError(f"{type(self).__name__} has no routing mode {mode!r}")
        yield


def group_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [G, T, d] through G linear maps, weight [G, out, d] and bias [G, out], as one batched multiply.
    A model alone is G = 1 of the same kernel: each of G models computes, forward and backward, bit for
    bit what it computes alone (nn.Linear's matrix multiply rounds its weight gradient differently)."""
    if bias is None:
        return torch.bmm(x, weight.transpose(1, 2))
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


class Linear(nn.Linear):
    """nn.Linear computed by group_linear, so that a model trained alone and the same model fused
    (models/fused.py) train identically."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(1, -1, x.shape[-1])
        y = group_linear(rows, self.weight.unsqueeze(0), None if self.bias is None else self.bias.unsqueeze(0))
        return y.reshape(*x.shape[:-1], self.out_features)


def dropout(x: torch.Tensor, p: float, training: bool, generators: list[torch.Generator] | None = None,
            sizes: list[int] | None = None) -> torch.Tensor:
    """Inverted dropout, drawn as torch draws it on the CPU (a Bernoulli mask from the default
    generator, scaled by 1/(1-p)), so that models trained as one (fused training: G models' rows along
    dim 0, `sizes` rows each, equal shares by default) each draw from their own generator exactly the
    mask they would draw alone; on every device alike."""
    if not training or p == 0:
        return x
    keep = torch.empty_like(x)
    if generators is None:
        keep.bernoulli_(1 - p)
    else:
        for block, generator in zip(keep.split(sizes or len(x) // len(generators)), generators):
            block.bernoulli_(1 - p, generator=generator)
    return x * keep.div_(1 - p)


class Dropout(nn.Module):
    """nn.Dropout drawn by `dropout` (the same mask on every device for a seed, fused or not)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, d_in: int, sample: torch.Tensor | None = None) -> int:
    """FLOPs (2 x multiply-adds) of nn.Linear and nn.Conv2d layers for one sample (zeros of d_in values,
    or `sample`), and of modules that say their own (`flops_per_token`, e.g. the MoE layer), measured
    with forward hooks."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if hasattr(module, "flops_per_token"):
            total += module.flops_per_token() * inputs[0].shape[0]
        elif isinstance(module, nn.Linear):
            total += 2 * module.in_features * module.out_features * inputs[0].numel() // module.in_features
        elif isinstance(module, nn.Conv2d):
            kernel = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total += 2 * kernel * output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Linear, nn.Conv2d)) or hasattr(m, "flops_per_token")]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(torch.zeros(1, d_in, device=device) if sample is None else sample.to(device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return int(total)


def image_shape(input_shape: tuple[int, ...] | None, d_in: int, model: str) -> tuple[int, int, int]:
    """(C, H, W) for a convolutional model, or a clear error for data that are not images."""
    if input_shape is None:
        raise ValueError(f"model {model!r} needs image data (digits, mnist, fashion_mnist, cifar10); "
                         f"this dataset gives flat vectors of {d_in} values")
    shape = tuple(input_shape)
    shape = (1, *shape) if len(shape) == 2 else shape
    if len(shape) != 3 or shape[0] * shape[1] * shape[2] != d_in:
        raise ValueError(f"model {model!r}: image shape {input_shape} does not match inputs of {d_in} values")
    return shape
