"""Model registry: experiment files name models; each model declares its parameters as a dataclass.

Every registered model takes `(d_in, d_out, params)` and its forward pass returns a `ModelOutput`, so
the trainer and the analysis treat a dense baseline and any MoE alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

from moelab.config.schema import Section, section_from_dataclass


@dataclass
class ModelOutput:
    y: torch.Tensor  # [B, d_out] prediction (logits or regression values)
    # already weighted terms that the trainer adds to the task loss, by name (logged per epoch)
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    gate_probs: torch.Tensor | None = None  # [B, E] router probabilities, for MoE models
    expert_index: torch.Tensor | None = None  # [B, k] experts each sample was sent to


class Model(nn.Module):
    """Base of every registered model: forward returns a ModelOutput.

    Models that can be evaluated with more than one routing (an MoE trained soft and inferred hard)
    list the extra ones in `routing_modes()`; the trainer evaluates the test set under each.
    """

    def routing_modes(self) -> list[str]:
        return []

    @contextlib.contextmanager
    def use_routing(self, mode: str) -> Iterator[None]:
        raise ValueError(f"{type(self).__name__} has no routing mode {mode!r}")
        yield


@dataclass(frozen=True)
class ModelSpec:
    name: str
    cls: type[nn.Module]
    params: type
    description: str

    @property
    def schema(self) -> Section:
        return section_from_dataclass(self.params)

    def check(self, params: dict) -> list[str]:
        """Checks across parameters (e.g. k <= num_experts), beyond each field's own range."""
        check = getattr(self.params, "check", None)
        return list(check(self.params(**params))) if check else []

    def build(self, d_in: int, d_out: int, params: dict) -> nn.Module:
        return self.cls(d_in, d_out, self.params(**params))


MODELS: dict[str, ModelSpec] = {}


def register(name: str, params: type, description: str) -> Callable[[type], type]:
    def decorate(cls: type) -> type:
        if name in MODELS:
            raise ValueError(f"model {name!r} registered twice")
        MODELS[name] = ModelSpec(name, cls, params, description)
        return cls

    return decorate


def get_model_spec(name: str) -> ModelSpec:
    _load_builtin_models()
    return MODELS[name]


def model_names() -> list[str]:
    _load_builtin_models()
    return sorted(MODELS)


def build_model(name: str, d_in: int, d_out: int, params: dict) -> nn.Module:
    return get_model_spec(name).build(d_in, d_out, params)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def param(default, help: str = "", **checks) -> dataclasses.Field:
    """A dataclass field with the metadata the config schema reads (min, max, choices, ...)."""
    return field(default=default, metadata={"help": help, **checks})


def _load_builtin_models() -> None:
    from moelab.models import dense, moe_models  # noqa: F401  (registers on import)
