"""Every model's parameters, as dataclasses the experiment file is checked against.

Kept apart from the models themselves (and free of torch) so that validating an experiment file,
or relaunching a finished one, never pays for importing torch.
"""

from __future__ import annotations

import math
from dataclasses import Field, asdict, dataclass

from moelab.schema import param

# the auxiliary losses every MoE model can weight (implemented in moe.py)
AUX_LOSSES = ("switch_balance", "cv_balance", "z_loss", "diversity", "kl_uniform")
BALANCE_LOSSES = ("switch_balance", "cv_balance", "kl_uniform")  # off unless balance: aux_loss
ROUTERS = ("topk", "expert_choice", "hash", "sinkhorn")
BALANCES = ("aux_loss", "bias", "none")
# the feature vector of the CNN backbone of an MoE model (backbone.CNNBackbone's default)
BACKBONE_FEATURES = 512

# `parameter_count(d_in, d_out, input_shape)` of each class below counts the trainable parameters of
# the model the implementation builds (count_parameters), from the parameters alone, so that a model
# too large to train is refused before anything is built. tests/test_config.py compares the two.


def linear_parameters(d_in: int, d_out: int, bias: bool = True) -> int:
    return d_in * d_out + (d_out if bias else 0)


def image_channels_and_side(input_shape: tuple[int, ...] | None) -> tuple[int, int]:
    if input_shape is None:
        raise ValueError("a convolutional model needs image data")
    shape = (1, *input_shape) if len(input_shape) == 2 else tuple(input_shape)
    return shape[0], shape[1]


def cnn_backbone_parameters(input_shape: tuple[int, ...] | None, width: int, features: int) -> int:
    """backbone.CNNBackbone: a stem convolution, three residual stages (width, 2x, 4x) with
    squeeze-excitation, a linear projection to `features`."""
    channels, side = image_channels_and_side(input_shape)
    total = channels * width * 9 + 2 * width  # stem: 3x3 convolution without bias, batch norm
    c_in = width
    for multiplier in (1, 2, 4):
        stride = 2 if side >= 8 else 1
        side = (side + stride - 1) // stride
        c_out = width * multiplier
        total += c_in * c_out * 9 + c_out * c_out * 9 + 4 * c_out  # two 3x3 convolutions, two batch norms
        squeeze = max(4, c_out // 8)
        total += linear_parameters(c_out, squeeze) + linear_parameters(squeeze, c_out)
        if c_in != c_out or stride != 1:
            total += c_in * c_out + 2 * c_out  # 1x1 projection of the skip connection, batch norm
        c_in = c_out
    return total + linear_parameters(c_in, features)


# Fields that several models declare alike, each in its own place in its own order: the gated models and
# moe_transformer weight the same losses, moe_routed and moe_transformer route with the same routers
# (router_problems). Defined once here so that defaults and checks cannot drift apart; where the help
# differs (what is routed, a sample or a token; which routers apply) each class gives its own.


def switch_balance_param(default: float) -> Field:
    return param(default, "weight of the Switch balance loss (E/k) sum f_i P_i", min=0.0)


def z_loss_param() -> Field:
    return param(0.0, "weight of the router z-loss mean(logsumexp(z)^2)", min=0.0)


def router_param(help: str) -> Field:
    return param("topk", help, choices=ROUTERS)


def balance_param(help: str) -> Field:
    return param("aux_loss", help, choices=BALANCES)


def bias_rate_param() -> Field:
    return param(1e-3, "balance: bias: how far each step moves a bias", min=0.0, exclusive_min=True)


def noisy_gating_param() -> Field:
    return param(False, "topk: learned noise on the router logits during training (Shazeer)")


def capacity_factor_param(help: str) -> Field:
    return param(None, help, nullable=True, min=0.0, exclusive_min=True, kind=float)


def shared_experts_param() -> Field:
    return param(0, "always-on experts added to the routed output (DeepSeekMoE)", min=0, max=64)


def granularity_param(help: str) -> Field:
    return param(1, help, min=1, max=64)


def hash_seed_param() -> Field:
    return param(0, "hash: the seed of the fixed assignment", min=0)


@dataclass(frozen=True)
class ParameterCounts:
    """A model's size, counted from its parameters and the data's dimensions (tests check these against
    the built models)."""

    active: int  # parameters that take part in predicting one sample under the inference routing
    total: int


@dataclass
class MLPParams:
    hidden: int = param(256, "width of each hidden layer", min=1)
    layers: int = param(2, "number of hidden layers", min=1, max=16)
    dropout: float = param(0.1, "dropout after each hidden layer", min=0.0, max=0.9)

    def parameter_counts(self, d_in: int, d_out: int, input_shape: tuple[int, ...] | None = None) -> ParameterCounts:
        widths = [d_in] + [self.hidden] * self.layers + [d_out]
        total = sum(linear_parameters(a, b) for a, b in zip(widths, widths[1:]))
        return ParameterCounts(active=total, total=total)

    def architecture(self) -> dict:
        """The parameters that decide what the weights are (their shapes and fixed values): weights of
        another run can start this one when these agree."""
        return {"hidden": self.hidden, "layers": self.layers}

    @staticmethod
    def hidden_for(parameters: int, d_in: int, d_out: int, layers: int) -> int:
        """The hidden width whose MLP has the parameter count nearest to `parameters` (the narrower on a
        tie; at least 1). The count is (L-1) h^2 + (d_in + d_out + L) h + d_out for L hidden layers."""
        a, b, c = layers - 1, d_in + d_out + layers, d_out - parameters
        root = -c / b if a == 0 else (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
        candidates = {max(1, math.floor(root)), max(1, math.ceil(root))}
        count = lambda h: a * h * h + b * h + d_out
        return min(sorted(candidates), key=lambda h: abs(count(h) - parameters))


@dataclass
class CNNParams:
    width: int = param(32, "channels of the first stage (then 2x and 4x)", min=4, max=512)
    features: int = param(512, "size of the pooled feature vector", min=8)
    dropout: float = param(0.3, "dropout before the classifier", min=0.0, max=0.9)

    def needs_images(self) -> bool:
        return True

    def parameter_counts(self, d_in: int, d_out: int, input_shape: tuple[int, ...] | None = None) -> ParameterCounts:
        total = cnn_backbone_parameters(input_shape, self.width, self.features) + linear_parameters(self.features, d_out)
        return ParameterCounts(active=total, total=total)

    def architecture(self) -> dict:
        return {"width": self.width, "features": self.features}


@dataclass
class GatedParams:
    num_experts: int = param(4, "number of experts", min=1, max=1024)
    hidden: int = param(256, "hidden width of each expert", min=1)
    dropout: float = param(0.3, "dropout inside each expert", min=0.0, max=0.9)
    batch_norm: bool = param(True, "batch norm inside each expert (statistics per expert)")
    backbone: str = param("none", "none: experts read the flat input; cnn: a CNN feature extractor first",
                          choices=("none", "cnn"))
    backbone_width: int = param(32, "cnn backbone: channels of its first stage", min=4, max=512)
    anneal_temperature: bool = param(False, "cosine-anneal the gate temperature from start to end")
    temperature_start: float = param(2.0, "gate temperature at the start (with anneal_temperature)", min=0.01, exclusive_min=True)
    temperature_end: float = param(0.5, "gate temperature at the end (with anneal_temperature)", min=0.01, exclusive_min=True)
    gate_noise: bool = param(False, "Gaussian noise on the router logits during training")
    gate_noise_sigma: float = param(0.1, "its standard deviation", min=0.0)
    balanced_init: bool = param(False, "router starts uniform (near-zero weights)")
    switch_balance: float = switch_balance_param(0.0)
    cv_balance: float = param(0.0, "weight of Shazeer's CV^2(importance) + CV^2(load)", min=0.0)
    z_loss: float = z_loss_param()
    diversity: float = param(0.0, "weight of the mean pairwise cosine similarity of expert outputs", min=0.0)
    kl_uniform: float = param(0.0, "weight of KL(mean gate || uniform)", min=0.0)

    def needs_images(self) -> bool:
        return self.backbone == "cnn"

    def check(self) -> list[str]:
        k = getattr(self, "k", 1)
        return [f"k={k} must be <= num_experts={self.num_experts}"] if k > self.num_experts else []

    def architecture(self) -> dict:
        shape = {"num_experts": self.num_experts, "hidden": self.hidden, "batch_norm": self.batch_norm,
                 "backbone": self.backbone}
        return {**shape, "backbone_width": self.backbone_width} if self.backbone == "cnn" else shape

    def experts_per_sample(self) -> int:
        """Experts that run for one sample under the inference routing."""
        return 1

    def training_only_parameters(self, d_in: int) -> int:
        """Parameters used in training only (not active at inference)."""
        return 0

    def parameter_counts(self, d_in: int, d_out: int, input_shape: tuple[int, ...] | None = None) -> ParameterCounts:
        """Backbone, router, experts (two linear layers, batch norm's scale and shift) and the
        training-only noise projection; active: what predicting one sample uses at inference."""
        shared = 0
        if self.backbone == "cnn":
            shared += cnn_backbone_parameters(input_shape, self.backbone_width, BACKBONE_FEATURES)
            d_in = BACKBONE_FEATURES
        shared += linear_parameters(d_in, self.num_experts)  # router
        expert = linear_parameters(d_in, self.hidden) + linear_parameters(self.hidden, d_out)
        expert += 2 * self.hidden if self.batch_norm else 0
        return ParameterCounts(active=shared + self.experts_per_sample() * expert,
                               total=shared + self.num_experts * expert + self.training_only_parameters(d_in))


@dataclass
class SoftMoEParams(GatedParams):
    def experts_per_sample(self) -> int:
        return self.num_experts


@dataclass
class TopKMoEParams(GatedParams):
    k: int = param(2, "experts per sample", min=1)
    noisy_gating: bool = param(True, "learned noise on the router logits during training (Shazeer)")
    cv_balance: float = param(0.01, "weight of Shazeer's CV^2(importance) + CV^2(load)", min=0.0)

    def experts_per_sample(self) -> int:
        return self.k

    def training_only_parameters(self, d_in: int) -> int:
        return d_in * self.num_experts if self.noisy_gating else 0  # the noise projection, no bias

    def architecture(self) -> dict:
        return {**super().architecture(), "noisy_gating": self.noisy_gating}


@dataclass
class HardMoEParams(GatedParams):
    k: int = param(1, "experts per sample at inference", min=1)

    def experts_per_sample(self) -> int:
        return self.k

    def training_identity(self) -> dict:
        # trained exactly as the soft MoE of the same parameters: k only decides how it infers
        return {"model": "moe", **{name: value for name, value in asdict(self).items() if name != "k"}}


@dataclass
class SwitchMoEParams(GatedParams):
    capacity_factor: float = param(1.25, "an expert takes at most capacity_factor * T / E tokens", min=0.0, exclusive_min=True)
    switch_balance: float = switch_balance_param(0.01)


@dataclass
class GuidedMoEParams(GatedParams):
    expert_classes: list = param(None, "classes assigned to each expert, e.g. [[0, 1], [2, 3]] (null: split "
                                 "the classes evenly in order)", nullable=True, kind=list)
    guide_weight: float = param(1.0, "weight of the gate's cross-entropy toward the assigned expert", min=0.0)

    def architecture(self) -> dict:
        # the class -> expert assignment is part of the weights (a buffer)
        return {**super().architecture(), "expert_classes": self.expert_classes}

    def check(self) -> list[str]:
        problems = super().check()
        if self.expert_classes is not None:
            if len(self.expert_classes) != self.num_experts:
                problems.append(f"expert_classes has {len(self.expert_classes)} entries for num_experts={self.num_experts}")
            flat = [c for group in self.expert_classes for c in (group if isinstance(group, list) else [group])]
            if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in flat):
                problems.append("expert_classes must be lists of class indices (integers >= 0)")
            elif len(flat) != len(set(flat)):
                problems.append("expert_classes assigns a class to more than one expert")
        return problems



def router_problems(router: str, balance: str, k: int, z_loss: float, unit: str) -> list[str]:
    """Balancing and k that a router cannot have (moe_routed and moe_transformer alike)."""
    problems = []
    if router != "topk" and balance == "bias":
        problems.append(f"balance=bias needs router=topk: {router} balances by construction or has no scores "
                        f"to bias; use balance=aux_loss or none")
    if router == "hash":
        if k != 1:
            problems.append(f"router=hash sends each {unit} to one expert: k must be 1, got {k}")
        if balance != "none" or z_loss:
            problems.append("router=hash has no router to balance or regularise: set balance: none (and z_loss: 0)")
    return problems


@dataclass
class RoutedMoEParams(GatedParams):
    router: str = router_param("topk: each sample picks its k best experts; expert_choice: each expert picks its "
                               "best samples; hash: a fixed hash of the input, no router; sinkhorn: balanced "
                               "assignment in training, greedy at inference")
    k: int = param(1, "experts per sample (expert_choice: on average)", min=1)
    balance: str = balance_param("aux_loss: the balance losses weighted below; bias: a per-expert bias on the choice, "
                                 "moved toward equal load after each step (DeepSeek-V3); none: no balancing")
    bias_rate: float = bias_rate_param()
    switch_balance: float = switch_balance_param(0.01)
    noisy_gating: bool = noisy_gating_param()
    capacity_factor: float = capacity_factor_param("topk/sinkhorn: an expert takes at most capacity_factor * T * k / E "
                                                   "samples (null: no limit); expert_choice: each expert takes that "
                                                   "many (null: 1.0)")
    shared_experts: int = shared_experts_param()
    granularity: int = granularity_param("split each expert into this many of 1/granularity the width, routing "
                                         "k * granularity of them (DeepSeekMoE's fine-grained experts)")
    hash_seed: int = hash_seed_param()

    def check(self) -> list[str]:
        problems = super().check()
        if self.hidden % self.granularity:
            problems.append(f"granularity={self.granularity} must divide hidden={self.hidden} (each expert is split "
                            f"into experts of hidden / granularity units)")
        if self.router != "topk" and (self.noisy_gating or self.gate_noise):
            problems.append(f"router={self.router} has no gate noise: noisy_gating and gate_noise belong to router=topk")
        return problems + router_problems(self.router, self.balance, self.k, self.z_loss, "sample")

    def architecture(self) -> dict:
        return {**super().architecture(), "router": self.router, "balance": self.balance,
                "noisy_gating": self.noisy_gating, "shared_experts": self.shared_experts,
                "granularity": self.granularity}

    def experts_per_sample(self) -> int:
        return self.k * self.granularity + self.shared_experts

    def parameter_counts(self, d_in: int, d_out: int, input_shape: tuple[int, ...] | None = None) -> ParameterCounts:
        """As for every gated model, with num_experts * granularity experts of hidden / granularity units
        (the router grows with them, and each expert has its own output bias), shared experts of that same
        size, and no router for hash."""
        shared = 0
        if self.backbone == "cnn":
            shared += cnn_backbone_parameters(input_shape, self.backbone_width, BACKBONE_FEATURES)
            d_in = BACKBONE_FEATURES
        experts, width = self.num_experts * self.granularity, self.hidden // max(self.granularity, 1)
        if self.router != "hash":
            shared += linear_parameters(d_in, experts)
        expert = linear_parameters(d_in, width) + linear_parameters(width, d_out) + (2 * width if self.batch_norm else 0)
        noise = d_in * experts if self.noisy_gating else 0  # training only
        return ParameterCounts(active=shared + self.experts_per_sample() * expert,
                               total=shared + (experts + self.shared_experts) * expert + noise)


# routers that choose by looking at other tokens of the batch: in a causal model they leak the future
FUTURE_LEAKING_ROUTERS = {
    "expert_choice": "each expert picks its best tokens among all of the batch's, later positions included",
    "sinkhorn": "its balanced assignment in training is computed over all of the batch's tokens, later positions "
                "included",
}


@dataclass
class TransformerParams:
    d_model: int = param(128, "width of the residual stream", min=8, max=8192)
    layers: int = param(4, "transformer blocks", min=1, max=64)
    heads: int = param(4, "attention heads (must divide d_model)", min=1, max=128)
    d_ff: int = param(512, "hidden width of each block's MLP", min=1)
    dropout: float = param(0.1, "dropout on attention weights, block outputs and MLP hidden units", min=0.0, max=0.9)

    def needs_tokens(self) -> bool:
        return True

    def check(self) -> list[str]:
        return [f"heads={self.heads} must divide d_model={self.d_model}"] if self.d_model % self.heads else []

    def architecture(self) -> dict:
        return {"d_model": self.d_model, "layers": self.layers, "heads": self.heads, "d_ff": self.d_ff}

    def moe_blocks(self) -> list[int]:
        """The blocks whose MLP is an MoE layer (none here)."""
        return []

    def trunk_parameters(self, context: int, vocabulary: int) -> int:
        """Embeddings (the output layer is tied to the token embedding), every block's attention and two
        layer norms, and the final layer norm: all but the blocks' MLPs."""
        d = self.d_model
        attention = linear_parameters(d, 3 * d) + linear_parameters(d, d)
        return vocabulary * d + context * d + self.layers * (attention + 4 * d) + 2 * d

    def mlp_parameters(self) -> int:
        return linear_parameters(self.d_model, self.d_ff) + linear_parameters(self.d_ff, self.d_model)

    def parameter_counts(self, d_in: int, d_out: int, input_shape: tuple[int, ...] | None = None) -> ParameterCounts:
        """d_in is the context length, d_out the vocabulary."""
        total = self.trunk_parameters(d_in, d_out) + self.layers * self.mlp_parameters()
        return ParameterCounts(active=total, total=total)

    def d_ff_for(self, parameters: int, d_in: int, d_out: int) -> int:
        """The MLP width whose transformer of these other dimensions has the parameter count nearest to
        `parameters` (at least 1): the count is linear in d_ff."""
        per_unit = self.layers * (2 * self.d_model + 1)
        fixed = self.trunk_parameters(d_in, d_out) + self.layers * self.d_model
        return max(1, round((parameters - fixed) / per_unit))


@dataclass
class MoETransformerParams(TransformerParams):
    num_experts: int = param(4, "experts of each MoE layer", min=1, max=1024)
    k: int = param(1, "experts per token", min=1)
    moe_every: int = param(1, "every n-th block's MLP is an MoE layer (the last block always is)", min=1, max=64)
    router: str = router_param("topk: each token picks its k best experts; hash: a fixed hash of the token's byte; "
                               "expert_choice and sinkhorn are refused here (they read later tokens)")
    balance: str = balance_param("aux_loss: the Switch balance loss weighted by switch_balance; bias: a per-expert "
                                 "bias on the choice, moved toward equal load after each step (DeepSeek-V3); none")
    bias_rate: float = bias_rate_param()
    switch_balance: float = switch_balance_param(0.01)
    z_loss: float = z_loss_param()
    noisy_gating: bool = noisy_gating_param()
    capacity_factor: float = capacity_factor_param("an expert takes at most capacity_factor * T * k / E tokens of a "
                                                   "batch, earlier positions first (null: no limit)")
    shared_experts: int = shared_experts_param()
    granularity: int = granularity_param("split each expert into this many of 1/granularity the width, routing "
                                         "k * granularity of them (fine-grained experts)")
    hash_seed: int = hash_seed_param()

    def check(self) -> list[str]:
        problems = super().check()
        if self.router in FUTURE_LEAKING_ROUTERS:
            problems.append(f"router={self.router} leaks the future in a causal model: "
                            f"{FUTURE_LEAKING_ROUTERS[self.router]}; use router: topk or hash")
        if self.k > self.num_experts:
            problems.append(f"k={self.k} must be <= num_experts={self.num_experts}")
        if self.d_ff % self.granularity:
            problems.append(f"granularity={self.granularity} must divide d_ff={self.d_ff} (each expert is split "
                            f"into experts of d_ff / granularity units)")
        if self.router != "topk" and self.noisy_gating:
            problems.append(f"router={self.router} has no gate noise: noisy_gating belongs to router=topk")
        return problems + router_problems(self.router, self.balance, self.k, self.z_loss, "token")

    def architecture(self) -> dict:
        return {**super().architecture(), "num_experts": self.num_experts, "moe_every": self.moe_every,
                "router": self.router, "balance": self.balance, "noisy_gating": self.noisy_gating,
                "shared_experts": self.shared_experts, "granularity": self.granularity}

    def moe_blocks(self) -> list[int]:
        return [i for i in range(self.layers) if (self.layers - 1 - i) % self.moe_every == 0]

    def expert_parameters(self) -> int:
        width = self.d_ff // self.granularity
        return linear_parameters(self.d_model, width) + linear_parameters(width, self.d_model)

    def parameter_counts(self, d_in: int, d_out: int, input_shape: tuple[int, ...] | None = None) -> ParameterCounts:
        """Dense blocks as in the transformer; each MoE block has a router (none for hash), num_experts *
        granularity experts of d_ff / granularity units and its shared experts of that size; active: the
        k * granularity routed and the shared experts a token runs through."""
        moe = len(self.moe_blocks())
        experts = self.num_experts * self.granularity
        router = 0 if self.router == "hash" else linear_parameters(self.d_model, experts)
        noise = self.d_model * experts if self.noisy_gating else 0  # training only
        dense = self.trunk_parameters(d_in, d_out) + (self.layers - moe) * self.mlp_parameters() + moe * router
        active = dense + moe * (self.k * self.granularity + self.shared_experts) * self.expert_parameters()
        total = dense + moe * ((experts + self.shared_experts) * self.expert_parameters() + noise)
        return ParameterCounts(active=active, total=total)
