"""Many models of one class and architecture as one model with a leading model dimension (fused
training): at digits or MNIST scale a training step costs the overhead of its few dozen kernels, not
their arithmetic, so N models in one set of kernels train in about the time of one.

    fused = FusedModel([model_a, model_b])   # same class and parameters, built from different seeds
    out = fused(x, targets)                   # x: [N, B, d_in]; every field of out: [N, ...]

Every parameter and buffer of the models becomes a slice of one stacked tensor [N, ...] held here, and
each model's own parameter a view of its slice: each model is still validated, tested, checkpointed and
loaded through its own module, unchanged. Dense layers run as batched matrix multiplies; an MoE layer
runs as one layer of N x E experts in which model n routes only among its own E (MoE.route), with
every router. Each model draws its dropout and gate noise from its own generator (`generators`), so it
draws what it would draw alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moelab.models.base import Dropout, Model, ModelOutput, dropout, group_linear
from moelab.models.dense import MLP
from moelab.models.moe import LayerWeights, NormState
from moelab.models.moe_models import GuidedMoE, MoEModel, RoutedMoE
from moelab.models.registry import get_model_spec


def fusion_problem(name: str, params: dict) -> str | None:
    """Why models `name` of these parameters cannot be trained fused; None when they can. Decided from
    the registry entry and the parameters, before any model is built."""
    spec = get_model_spec(name)
    return _class_problem(spec.model_class, getattr(spec.params(**params), "backbone", "none") == "cnn")


def _class_problem(model_class: type, convolutional_backbone: bool) -> str | None:
    """The one rule, for fusion_problem before anything is built and for FusedModel given built models."""
    if issubclass(model_class, MLP):
        return None
    if not issubclass(model_class, MoEModel):
        return f"model class {model_class.__name__} has no fused form yet (fused: mlp and the MoE models on flat inputs)"
    if convolutional_backbone:
        return "a convolutional backbone has no fused form yet"
    return None


class FusedModel(nn.Module):
    def __init__(self, models: list[Model]):
        super().__init__()
        first = models[0]
        problem = _class_problem(type(first), getattr(first, "backbone", None) is not None)
        if problem is not None:
            raise ValueError(f"cannot fuse {type(first).__name__}: {problem}")
        shapes = [[(name, tuple(p.shape)) for name, p in m.named_parameters()] for m in models]
        if any(s != shapes[0] or type(m) is not type(first) for s, m in zip(shapes, models)):
            raise ValueError("fused models must be of one class with parameters of the same shapes")
        self.models = list(models)  # a plain list: their parameters are views of the stacked ones below
        self.parameter_names = [name for name, _ in first.named_parameters()]
        # in the models' parameter order, so that an optimizer's state maps one to one (train/fused.py)
        self.stacked = nn.ParameterList(
            [torch.stack([dict(m.named_parameters())[name].detach() for m in models]) for name in self.parameter_names])
        self.buffer_names = [name for name, _ in first.named_buffers()]
        self.stacked_buffers = [torch.stack([dict(m.named_buffers())[name] for m in models]) for name in self.buffer_names]
        for n, model in enumerate(models):
            for name, stacked in zip(self.parameter_names, self.stacked):
                module, attribute = _owner(model, name)
                module._parameters[attribute] = nn.Parameter(stacked.data[n], requires_grad=stacked.requires_grad)
            for name, stacked in zip(self.buffer_names, self.stacked_buffers):
                module, attribute = _owner(model, name)
                module._buffers[attribute] = stacked[n]
        self.generators: list[torch.Generator] | None = None  # one per model; None: torch's default
        self._choice_counts: torch.Tensor | None = None  # [N, E] of the last training batch (bias balancing)

    def __len__(self) -> int:
        return len(self.models)

    def train(self, mode: bool = True) -> FusedModel:
        super().train(mode)
        for model in self.models:
            model.train(mode)
        return self

    def parameter(self, name: str) -> torch.Tensor:
        return self.stacked[self.parameter_names.index(name)]

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> ModelOutput:
        first = self.models[0]
        if isinstance(first, MLP):
            return ModelOutput(y=self._mlp(first, x))
        moe = first.moe
        route_key = x if isinstance(first, RoutedMoE) and moe.router is None else None
        out = moe.route(x, route_key, self._layer_weights("moe."), self.generators)
        self._choice_counts = out.choice_counts
        result = ModelOutput(y=out.y, aux_losses=out.aux_losses, gate_probs=out.gate_probs,
                             expert_index=out.expert_index, expert_weights=out.expert_weights)
        if isinstance(first, GuidedMoE):
            if targets is not None:
                assigned = first.assigned_expert[targets]  # the same classes -> experts map for every model
                guide = torch.stack([F.cross_entropy(logits, experts) for logits, experts in zip(out.router_logits, assigned)])
                result.aux_losses = {**out.aux_losses, "guide": first.guide_weight * guide}
                result.metrics = {"guide_agreement": (out.gate_probs.argmax(dim=-1) == assigned).float().mean(1)}
            return result
        result.metrics = {"dropped": out.dropped_fraction} if out.dropped_fraction is not None else {}
        result.expert_load = out.expert_load
        return result

    def set_progress(self, fraction: float) -> None:
        for model in self.models:
            model.set_progress(fraction)

    @torch.no_grad()
    def after_step(self, training: torch.Tensor) -> None:
        """Bias balancing of the models still training (`training`: [N] bool), as MoE.after_step."""
        if self._choice_counts is None:
            return
        counts = self._choice_counts
        bias = self.stacked_buffers[self.buffer_names.index("moe.expert_bias")]
        step = self.models[0].moe.bias_rate * torch.sign(counts.mean(dim=1, keepdim=True) - counts)
        bias.add_(step * training.unsqueeze(1).to(step.dtype))
        self._choice_counts = None

    def _mlp(self, mlp: MLP, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(mlp.net):
            if isinstance(layer, nn.Linear):
                x = group_linear(x, self.parameter(f"net.{i}.weight"), self.parameter(f"net.{i}.bias"))
            elif isinstance(layer, nn.ReLU):
                x = F.relu(x)
            elif isinstance(layer, Dropout):
                x = dropout(x, layer.p, self.training, self.generators)
            else:
                raise TypeError(f"no fused form of {type(layer).__name__}")
        return x

    def _layer_weights(self, prefix: str) -> LayerWeights:
        def get(name: str) -> torch.Tensor | None:
            full = prefix + name
            if full in self.parameter_names:
                return self.parameter(full)
            if full in self.buffer_names:
                return self.stacked_buffers[self.buffer_names.index(full)]
            return None

        def experts(name: str) -> torch.Tensor | None:  # [N, E, ...] -> [N * E, ...]: model n's experts, then n+1's
            stacked = get(name)
            return None if stacked is None else stacked.flatten(0, 1)

        def norm(name: str) -> NormState | None:
            if get(f"{name}.weight") is None:
                return None
            return NormState(*(experts(f"{name}.{part}") for part in ("weight", "bias", "running_mean", "running_var")))

        shared = None
        if get("shared.w1") is not None:
            shared = (experts("shared.w1"), experts("shared.b1"), experts("shared.w2"), experts("shared.b2"))
        return LayerWeights(router_weight=get("router.weight"), router_bias=get("router.bias"),
                            noise_weight=get("noise.weight"), w1=experts("w1"), b1=experts("b1"), w2=experts("w2"),
                            b2=experts("b2"), expert_bias=get("expert_bias"), shared=shared, norm=norm("norm"),
                            shared_norm=norm("shared.norm"))


def _owner(model: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    *path, attribute = dotted.split(".")
    module = model
    for part in path:
        module = getattr(module, part)
    return module, attribute
