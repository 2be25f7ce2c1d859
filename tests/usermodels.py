"""Ordinary user modules for ``tests/test_user_modules.py``.

Each ``make_*`` factory returns a fresh, untrained classifier of the 8x8 digits (inputs
``[N, 1, 8, 8]`` or ``[N, 64]``, 10 logits): the kind of module people write, with the
features mliscan must honour (its own ``forward``, hooks, shared and tied modules,
parametrizations, batch norm used in unusual ways, non-tensor outputs, integer buffers).
The file imports only torch (transformers lazily), so the command-line tests copy it into a
temporary folder and name its factories with ``--model usernets:make_...``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrizations, prune

D, H, C = 64, 32, 10


def mlp(*middle: nn.Module) -> list[nn.Module]:
    """Flatten, Linear(64, 32), the given modules, Linear(32, 10)."""
    return [nn.Flatten(), nn.Linear(D, H), *middle, nn.Linear(H, C)]


# ---- 1. nn.Sequential subclasses with their own forward -------------------------------------
class TemperatureSequential(nn.Sequential):
    """The Sequential's output divided by a temperature."""

    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__(*mlp(nn.Tanh()))
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) / self.temperature


class ResidualSequential(nn.Sequential):
    """Its children called by hand, with a residual connection around the middle layer."""

    def __init__(self) -> None:
        super().__init__(nn.Linear(D, H), nn.Tanh(), nn.Linear(H, H), nn.Tanh(), nn.Linear(H, C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self[1](self[0](x.flatten(1)))
        h = h + self[3](self[2](h))
        return self[4](h)


class ConvFlattenSequential(nn.Sequential):
    """A convolution, then a flatten done in forward (no Flatten module), then a Linear."""

    def __init__(self) -> None:
        super().__init__(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Linear(4 * D, C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self[1](self[0](x.reshape(-1, 1, 8, 8)))
        return self[2](torch.flatten(h, 1))


def make_temperature_sequential() -> nn.Module:
    return TemperatureSequential()


def make_residual_sequential() -> nn.Module:
    return ResidualSequential()


def make_conv_flatten_sequential() -> nn.Module:
    return ConvFlattenSequential()


# ---- 2. hooks --------------------------------------------------------------------------------
def shift_input(module: nn.Module, args: tuple) -> tuple:
    return (args[0] * 2.0 - 0.5,)


def scale_output(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output * 0.75 + 0.1


def bn_output_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output * 1.5 + 0.25


def global_hook(module: nn.Module, args: tuple, output: object) -> object:
    """For ``register_module_forward_hook``: acts on the modules marked ``user_global_hook``."""
    if getattr(module, "user_global_hook", False):
        return torch.tanh(output) * 2.0
    return None


def make_root_hooks() -> nn.Module:
    """A forward pre-hook and a forward hook on the Sequential itself."""
    net = nn.Sequential(*mlp(nn.Tanh()))
    net.register_forward_pre_hook(shift_input)
    net.register_forward_hook(scale_output)
    return net


def make_bn_child_hook() -> nn.Module:
    """A forward hook on a batch-norm child (changes what the next layer sees)."""
    net = nn.Sequential(*mlp(nn.BatchNorm1d(H), nn.Tanh()))
    net[2].register_forward_hook(bn_output_hook)
    return net


def make_global_hook() -> nn.Module:
    """A plain MLP whose first Linear is acted on by :func:`global_hook` (registered by the
    test with ``torch.nn.modules.module.register_module_forward_hook``)."""
    net = nn.Sequential(*mlp(nn.Tanh()))
    net[1].user_global_hook = True
    return net


# ---- 3. shared modules and tied parameters ---------------------------------------------------
def make_relu_reused() -> nn.Module:
    """One nn.ReLU instance at two places of a Sequential."""
    relu = nn.ReLU()
    return nn.Sequential(
        nn.Flatten(), nn.Linear(D, H), relu, nn.Linear(H, H), relu, nn.Linear(H, C)
    )


def make_tanh_reused() -> nn.Module:
    """One nn.Tanh instance at two places of a Sequential (smooth)."""
    tanh = nn.Tanh()
    return nn.Sequential(
        nn.Flatten(), nn.Linear(D, H), tanh, nn.Linear(H, H), tanh, nn.Linear(H, C)
    )


def make_linear_reused() -> nn.Module:
    """One Linear applied twice (its weights appear under two state-dict names)."""
    shared = nn.Linear(H, H)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(D, H), nn.Tanh(), shared, nn.Tanh(), shared, nn.Tanh(),
        nn.Linear(H, C),
    )  # fmt: skip


class TiedNet(nn.Module):
    """``b.weight`` is ``a.weight`` (one parameter under two names); biases distinct."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(D, H)
        self.a = nn.Linear(H, H)
        self.b = nn.Linear(H, H)
        self.b.weight = self.a.weight
        self.out = nn.Linear(H, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x.flatten(1)))
        h = torch.tanh(self.a(h))
        h = torch.tanh(self.b(h))
        return self.out(h)


def make_tied() -> nn.Module:
    return TiedNet()


# ---- 4. subclasses of library layers with their own forward ----------------------------------
class LeakyReLU(nn.ReLU):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, 0.2)


class ScaledTanh(nn.Tanh):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.7159 * torch.tanh(x * (2.0 / 3.0))


class GatedLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * torch.sigmoid(x.mean(-1, keepdim=True) * 4.0)


class ScaledBatchNorm1d(nn.BatchNorm1d):
    """Batch norm whose output is rescaled after normalisation (its input is unchanged)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 0.5 + 0.1


def make_subclass_relu() -> nn.Module:
    return nn.Sequential(*mlp(LeakyReLU()))


def make_subclass_tanh_linear() -> nn.Module:
    return nn.Sequential(nn.Flatten(), GatedLinear(D, H), ScaledTanh(), GatedLinear(H, C))


def make_subclass_bn() -> nn.Module:
    return nn.Sequential(*mlp(ScaledBatchNorm1d(H), nn.Tanh()))


# ---- 5. weight reparametrisations --------------------------------------------------------------
def make_weight_norm_old() -> nn.Module:
    """torch.nn.utils.weight_norm (a forward pre-hook computing ``weight``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = nn.utils.weight_norm(nn.Linear(D, H))
        last = nn.utils.weight_norm(nn.Linear(H, C), dim=None)
    return nn.Sequential(nn.Flatten(), first, nn.Tanh(), last)


def make_spectral_norm_old() -> nn.Module:
    """torch.nn.utils.spectral_norm (weight_orig, and u, v buffers updated in training)."""
    middle = nn.utils.spectral_norm(nn.Linear(H, H))
    return nn.Sequential(
        nn.Flatten(), nn.Linear(D, H), nn.Tanh(), middle, nn.Tanh(), nn.Linear(H, C)
    )


def make_pruned() -> nn.Module:
    """torch.nn.utils.prune.l1_unstructured (weight_orig and a float weight_mask buffer)."""
    net = nn.Sequential(*mlp(nn.Tanh()))
    prune.l1_unstructured(net[1], "weight", amount=0.3)
    return net


def prune_more(net: nn.Module) -> None:
    """After training: prune again, so the two endpoints' masks differ."""
    prune.l1_unstructured(net[1], "weight", amount=0.2)


def make_weight_norm_new() -> nn.Module:
    """torch.nn.utils.parametrizations.weight_norm (original0, original1)."""
    first = parametrizations.weight_norm(nn.Linear(D, H))
    last = parametrizations.weight_norm(nn.Linear(H, C), dim=None)
    return nn.Sequential(nn.Flatten(), first, nn.Tanh(), last)


def make_orthogonal_spectral() -> nn.Module:
    """parametrizations.orthogonal and parametrizations.spectral_norm."""
    middle = parametrizations.orthogonal(nn.Linear(H, H))
    last = parametrizations.spectral_norm(nn.Linear(H, C))
    return nn.Sequential(nn.Flatten(), nn.Linear(D, H), nn.Tanh(), middle, nn.Tanh(), last)


# ---- 6. batch norm ---------------------------------------------------------------------------
class SharedBatchNorm(nn.Module):
    """One BatchNorm1d called twice per forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(D, H)
        self.bn = nn.BatchNorm1d(H)
        self.fc2 = nn.Linear(H, H)
        self.out = nn.Linear(H, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.bn(self.fc1(x.flatten(1))))
        h = torch.tanh(self.bn(self.fc2(h)))
        return self.out(h)


def make_bn_twice() -> nn.Module:
    return SharedBatchNorm()


def make_bn_no_running_stats() -> nn.Module:
    return nn.Sequential(*mlp(nn.BatchNorm1d(H, track_running_stats=False), nn.Tanh()))


def make_bn_plain() -> nn.Module:
    """The control: Linear-BN-ReLU twice, as a plain Sequential."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(D, H), nn.BatchNorm1d(H), nn.ReLU(),
        nn.Linear(H, H), nn.BatchNorm1d(H), nn.ReLU(), nn.Linear(H, C),
    )  # fmt: skip


def make_conv_bn2d() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh(), nn.Flatten(),
        nn.Linear(4 * D, C),
    )  # fmt: skip


# ---- 7. other normalisations, attention, hard activations ------------------------------------
def make_layer_norm_module() -> nn.Module:
    return nn.Sequential(*mlp(nn.LayerNorm(H), nn.GELU()))


class FunctionalLayerNorm(nn.Module):
    """torch.layer_norm and F.layer_norm called directly in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(D, H)
        self.fc2 = nn.Linear(H, H)
        self.out = nn.Linear(H, C)
        self.g1 = nn.Parameter(torch.ones(H))
        self.b1 = nn.Parameter(torch.zeros(H))
        self.g2 = nn.Parameter(torch.ones(H))
        self.b2 = nn.Parameter(torch.zeros(H))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.layer_norm(self.fc1(x.flatten(1)), (H,), self.g1, self.b1, 1e-5)
        h = F.gelu(h)
        h = F.layer_norm(self.fc2(h), (H,), self.g2, self.b2)
        return self.out(torch.tanh(h))


def make_layer_norm_functional() -> nn.Module:
    return FunctionalLayerNorm()


class InstanceGroupNorm(nn.Module):
    """nn.GroupNorm, then F.instance_norm over 4 channels of 8 positions."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(D, H)
        self.gn = nn.GroupNorm(4, H)
        self.fc2 = nn.Linear(H, H)
        self.in_weight = nn.Parameter(torch.ones(4))
        self.in_bias = nn.Parameter(torch.zeros(4))
        self.out = nn.Linear(H, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.gn(self.fc1(x.flatten(1))))
        h = self.fc2(h).reshape(-1, 4, 8)
        h = F.instance_norm(h, weight=self.in_weight, bias=self.in_bias)
        return self.out(torch.tanh(h.flatten(1)))


def make_instance_group_norm() -> nn.Module:
    return InstanceGroupNorm()


class TinyAttention(nn.Module):
    """The 64 pixels as 8 tokens of 8; one head of F.scaled_dot_product_attention."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.proj = nn.Linear(8, 8)
        self.out = nn.Linear(D, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.reshape(-1, 8, 8)
        q, k, v = self.qkv(t).unsqueeze(1).chunk(3, dim=-1)
        a = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        t = t + self.proj(a)
        return self.out(torch.tanh(t).flatten(1))


def make_attention() -> nn.Module:
    return TinyAttention()


class HardActivations(nn.Module):
    """F.hardswish, F.hardsigmoid and an nn.Hardswish module."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(D, H)
        self.fc2 = nn.Linear(H, H)
        self.act = nn.Hardswish()
        self.out = nn.Linear(H, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.hardswish(self.fc1(x.flatten(1)) * 3.0)
        h = F.hardsigmoid(self.fc2(h) * 3.0) * 2.0
        return self.out(self.act(h * 3.0))


def make_hard_activations() -> nn.Module:
    return HardActivations()


# ---- 8. outputs that are not a tensor --------------------------------------------------------
class _Body(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(D, H)
        self.head = nn.Linear(H, C)
        self.aux_head = nn.Linear(H, C)

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.fc1(x.flatten(1)))
        return self.head(h), self.aux_head(h) * 3.0


class DictOutput(_Body):
    """{"aux": ..., "logits": ...}: the logits are not the first entry."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, aux = self.parts(x)
        return {"aux": aux, "logits": logits}


class TupleOutput(_Body):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, aux = self.parts(x)
        return logits, aux


_OUTPUT_CLASS: list[type] = []


def model_output_class() -> type:
    """A transformers ModelOutput with hidden states before the logits (made once)."""
    if not _OUTPUT_CLASS:
        from transformers.utils import ModelOutput

        @dataclass
        class TinyOutput(ModelOutput):
            loss: torch.Tensor | None = None
            hidden_states: torch.Tensor | None = None
            logits: torch.Tensor | None = None

        _OUTPUT_CLASS.append(TinyOutput)
    return _OUTPUT_CLASS[0]


class ModelOutputNet(_Body):
    def forward(self, x: torch.Tensor) -> object:
        logits, aux = self.parts(x)
        return model_output_class()(hidden_states=aux, logits=logits)


def make_dict_output() -> nn.Module:
    return DictOutput()


def make_tuple_output() -> nn.Module:
    return TupleOutput()


def make_model_output() -> nn.Module:
    return ModelOutputNet()


# ---- 9. integer and bool buffers -------------------------------------------------------------
class IndexedByBuffers(nn.Module):
    """A long buffer permutes the logits, a bool buffer negates them."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(*mlp(nn.Tanh()))
        self.register_buffer("perm", torch.arange(C))
        self.register_buffer("negate", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.body(x).index_select(1, self.perm)
        return torch.where(self.negate, -z, z)


def make_int_buffers() -> nn.Module:
    return IndexedByBuffers()


def change_int_buffers(net: nn.Module) -> None:
    """Before training (after theta_0 is taken): the final model's buffers differ."""
    net.perm.copy_(torch.roll(torch.arange(C), 3))
    net.negate.fill_(True)


# ---- controls --------------------------------------------------------------------------------
def make_plain_tanh() -> nn.Module:
    return nn.Sequential(*mlp(nn.Tanh()))


def make_plain_relu() -> nn.Module:
    return nn.Sequential(*mlp(nn.ReLU()))
