"""Every model's parameters, as dataclasses the experiment file is checked against.

Kept apart from the models themselves (and free of torch) so that validating an experiment file,
or relaunching a finished one, never pays for importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from moelab.schema import param

# the auxiliary losses every MoE model can weight (implemented in moe.py)
AUX_LOSSES = ("switch_balance", "cv_balance", "z_loss", "diversity", "kl_uniform")
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


@dataclass
class MLPParams:
    hidden: int = param(256, "width of each hidden layer", min=1)
    layers: int = param(2, "number of hidden layers", min=1, max=16)
    dropout: float = param(0.1, "dropout after each hidden layer", min=0.0, max=0.9)

    def parameter_count(self, d_in: int, d_out: int, input_shape: tuple[int, ...] | None = None) -> int:
        widths = [d_in] + [self.hidden] * self.layers + [d_out]
        return sum(linear_parameters(a, b) for a, b in zip(widths, widths[1:]))


@dataclass
class CNNParams:
    width: int = param(32, "channels of the first stage (then 2x and 4x)", min=4, max=512)
    features: int = param(512, "size of the pooled feature vector", min=8)
    dropout: float = param(0.3, "dropout before the classifier", min=0.0, max=0.9)

    def needs_images(self) -> bool:
        return True

    def parameter_count(self, d_in: int, d_out: int, input_shape: tuple[int, ...] | None = None) -> int:
        return cnn_backbone_parameters(input_shape, self.width, self.features) + linear_parameters(self.features, d_out)


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
    switch_balance: float = param(0.0, "weight of the Switch balance loss (E/k) sum f_i P_i", min=0.0)
    cv_balance: float = param(0.0, "weight of Shazeer's CV^2(importance) + CV^2(load)", min=0.0)
    z_loss: float = param(0.0, "weight of the router z-loss mean(logsumexp(z)^2)", min=0.0)
    diversity: float = param(0.0, "weight of the mean pairwise cosine similarity of expert outputs", min=0.0)
    kl_uniform: float = param(0.0, "weight of KL(mean gate || uniform)", min=0.0)

    def needs_images(self) -> bool:
        return self.backbone == "cnn"

    def parameter_count(self, d_in: int, d_out: int, input_shape: tuple[int, ...] | None = None) -> int:
        total = 0
        if self.backbone == "cnn":
            total += cnn_backbone_parameters(input_shape, self.backbone_width, BACKBONE_FEATURES)
            d_in = BACKBONE_FEATURES
        experts = self.num_experts
        total += linear_parameters(d_in, experts)  # router
        if getattr(self, "noisy_gating", False):
            total += linear_parameters(d_in, experts, bias=False)  # learned noise scale
        total += experts * (linear_parameters(d_in, self.hidden) + linear_parameters(self.hidden, d_out))
        if self.batch_norm:
            total += experts * 2 * self.hidden
        return total

    def check(self) -> list[str]:
        k = getattr(self, "k", 1)
        return [f"k={k} must be <= num_experts={self.num_experts}"] if k > self.num_experts else []


@dataclass
class SoftMoEParams(GatedParams):
    pass


@dataclass
class TopKMoEParams(GatedParams):
    k: int = param(2, "experts per sample", min=1)
    noisy_gating: bool = param(True, "learned noise on the router logits during training (Shazeer)")
    cv_balance: float = param(0.01, "weight of Shazeer's CV^2(importance) + CV^2(load)", min=0.0)


@dataclass
class HardMoEParams(GatedParams):
    k: int = param(1, "experts per sample at inference", min=1)


@dataclass
class SwitchMoEParams(GatedParams):
    capacity_factor: float = param(1.25, "an expert takes at most capacity_factor * T / E tokens", min=0.0, exclusive_min=True)
    switch_balance: float = param(0.01, "weight of the Switch balance loss (E/k) sum f_i P_i", min=0.0)


@dataclass
class GuidedMoEParams(GatedParams):
    expert_classes: list = param(None, "classes assigned to each expert, e.g. [[0, 1], [2, 3]] (null: split "
                                 "the classes evenly in order)", nullable=True, kind=list)
    guide_weight: float = param(1.0, "weight of the gate's cross-entropy toward the assigned expert", min=0.0)

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

