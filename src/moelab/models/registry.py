"""The table of models that experiment files name: parameters, implementation, description.

The table holds each implementation by module and class name and imports it only to build a model:
checking an experiment file needs the parameters alone, and must not pay for importing torch.
A new model is a class in this package (see base.py), a params dataclass (params.py) and a row here.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import asdict, dataclass

from moelab.models import params as p
from moelab.schema import Section, section_from_dataclass


@dataclass(frozen=True)
class ModelSpec:
    name: str
    params: type
    implementation: str  # "module:Class" inside moelab.models
    description: str

    @property
    def schema(self) -> Section:
        return section_from_dataclass(self.params)

    def check(self, params: dict) -> list[str]:
        """Checks across parameters (e.g. k <= num_experts), beyond each field's own range."""
        check = getattr(self.params, "check", None)
        return list(check(self.params(**params))) if check else []

    def needs_images(self, params: dict) -> bool:
        needs = getattr(self.params, "needs_images", None)
        return bool(needs(self.params(**params))) if needs else False

    @property
    def needs_tokens(self) -> bool:
        """Reads windows of token ids (sequence models), and nothing else."""
        return hasattr(self.params, "needs_tokens")

    @property
    def has_experts(self) -> bool:
        return "num_experts" in self.schema

    def architecture(self, params: dict) -> dict:
        """What decides the weights' shapes and fixed values: runs that agree on it can share weights."""
        return self.params(**params).architecture()

    def training_identity(self, variant: dict) -> str:
        """What decides how a variant trains: variants of one job with the same identity train the same
        network (the same weights after every step), whatever they do at inference."""
        params = self.params(**model_params(variant))
        own = getattr(params, "training_identity", None)
        identity = own() if own else {"model": self.name, **asdict(params)}
        return json.dumps({**identity, "init_from": variant.get("init_from")}, sort_keys=True, default=str)

    def parameter_counts(self, d_in: int, d_out: int, params: dict,
                         input_shape: tuple[int, ...] | None = None) -> p.ParameterCounts:
        """Active and total parameters, computed without building the model (or importing torch)."""
        return self.params(**params).parameter_counts(d_in, d_out, input_shape)

    @property
    def model_class(self) -> type:
        """The implementation's class (imports it, and so torch)."""
        module, _, cls = self.implementation.partition(":")
        return getattr(importlib.import_module(f"moelab.models.{module}"), cls)

    def build(self, d_in: int, d_out: int, params: dict, input_shape: tuple[int, ...] | None = None):
        return self.model_class(d_in, d_out, self.params(**params), input_shape)


MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("mlp", p.MLPParams, "dense:MLP", "dense multi-layer perceptron baseline"),
    ModelSpec("cnn", p.CNNParams, "dense:CNN",
              "dense CNN baseline: residual squeeze-excitation blocks, pooled features, linear head"),
    ModelSpec("moe", p.SoftMoEParams, "moe_models:SoftMoE", "soft MoE: all experts, softmax gate"),
    ModelSpec("moe_topk", p.TopKMoEParams, "moe_models:TopKMoE", "sparse noisy top-k gate with a load-balancing loss"),
    ModelSpec("moe_hard", p.HardMoEParams, "moe_models:HardMoE",
              "trained with a soft gate, inferred with hard top-k routing"),
    ModelSpec("moe_switch", p.SwitchMoEParams, "moe_models:SwitchMoE",
              "top-1 with a capacity factor; tokens over capacity are dropped"),
    ModelSpec("moe_routed", p.RoutedMoEParams, "moe_models:RoutedMoE",
              "sparse MoE with a choice of router (topk, expert_choice, hash, sinkhorn), balancing (aux_loss, "
              "bias, none), shared and fine-grained experts"),
    ModelSpec("transformer", p.TransformerParams, "transformer:Transformer",
              "dense byte-level causal transformer (text): pre-norm blocks of attention and an MLP"),
    ModelSpec("moe_transformer", p.MoETransformerParams, "transformer:Transformer",
              "causal transformer whose MLPs (every moe_every-th block) are MoE layers with a choice of router"),
    ModelSpec("moe_guided", p.GuidedMoEParams, "moe_models:GuidedMoE",
              "label-guided: the gate learns the expert assigned to each class"),
)}


def get_model_spec(name: str) -> ModelSpec:
    return MODELS[name]


def model_names() -> list[str]:
    return sorted(MODELS)


def model_params(variant: dict) -> dict:
    """A variant's model parameters: everything in its mapping but its name, model and the weights it
    starts from (init_from)."""
    return {k: v for k, v in variant.items() if k not in ("name", "model", "init_from")}


def build_model(name: str, d_in: int, d_out: int, params: dict, input_shape: tuple[int, ...] | None = None):
    """`input_shape` is the image shape (C, H, W) or (H, W) behind flat inputs, for convolutional models."""
    return get_model_spec(name).build(d_in, d_out, params, input_shape)
