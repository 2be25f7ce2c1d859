"""The adapter contract: everything architecture-specific lives behind it.

An adapter builds the module, maps checkpoint keys onto it, defines the per-example loss,
the logits used for the Gauss length, how inputs are shaped, which layers are batch norm,
and training defaults. Adapters never import the engine or the CLI.

Third-party packages add adapters through the ``mliscan.adapters`` entry-point group; the
built-ins are declared the same way (see ``pyproject.toml``).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from mliscan.errors import AdapterOptionError, CheckpointMismatchError, DataError, short_list
from mliscan.permutation import PermutationSpec
from mliscan.spec import EVAL_BATCH_CANDIDATES, AdapterFlag


@dataclass(frozen=True)
class DataInfo:
    """What an adapter needs to know about the data to build a module."""

    input_shape: tuple[int, ...]
    num_classes: int


@dataclass
class DataHooks:
    """What a model brings to the data it is measured on (hub models: a tokenizer, an
    image transform). Built by :meth:`Adapter.data_hooks`; the data layer only calls them."""

    tokenizer: Any = None
    """A transformers tokenizer (text data)."""
    objective: str | None = None
    """'causal', 'masked' or 'classification': how text becomes inputs and targets."""
    image_transform: Any = None
    """PIL image -> float tensor [C, H, W] (image-folder data)."""
    label_names: dict[str, int] | None = None
    """A model's own label -> id map (sequence classification)."""
    max_length: int | None = None
    """The model's context length (text): longer sequences are refused."""


@dataclass(frozen=True)
class TrainDefaults:
    optimizer: str = "sgd"
    lr: float = 0.1
    epochs: int = 100
    batch_size: int = 128


class Adapter(ABC):
    """Base class of architecture adapters. Subclasses set ``Options`` to a frozen dataclass."""

    # set on the class, or per instance by adapters of a family (vgg16, resnet20)
    name: str = ""
    description: str = ""
    default_data: ClassVar[str] = "digits"
    Options: ClassVar[type] = type("NoOptions", (), {})
    train_defaults: ClassVar[TrainDefaults] = TrainDefaults()
    eval_batch_candidates: ClassVar[tuple[int, ...]] = EVAL_BATCH_CANDIDATES
    """Evaluation batch sizes the automatic choice picks from (large models: small ones)."""
    trainable: ClassVar[bool] = True
    """Whether ``mliscan train`` can train it (hub adapters evaluate only)."""
    # Capabilities, declared (the engine never compares method identities):
    custom_logits: ClassVar[bool] = False
    """``logits`` is not the module output (the second-order pass then does not apply)."""
    targets_from_inputs: ClassVar[bool] = False
    """``prepare_targets`` derives the targets from the inputs (such data cannot be streamed)."""
    permutation: ClassVar[staticmethod[[nn.Module], PermutationSpec] | None] = None
    """How ``--align`` permutes hidden units: a function from the built module to its
    :class:`~mliscan.permutation.PermutationSpec` (``permutation.sequential_spec`` for a
    plain Sequential), or None when the architecture declares none."""
    flags: ClassVar[tuple[AdapterFlag, ...]] = ()
    """Command-line flags that set its options (``--hidden``); declared without torch, so
    that ``--help`` can show them (built-ins: ``adapters/flags.py``). Other options are
    given as ``--arch-opt KEY=VALUE``."""
    example_data: ClassVar[DataInfo] = DataInfo((3, 16, 16), 7)
    """The data shape of :meth:`example` (small colour images unless declared)."""

    def named_as(self) -> str:
        """How the user chose this architecture, in messages (``--arch NAME``)."""
        return f"--arch {self.name}"

    def data_hint(self, example_shape: tuple[int, ...]) -> str:
        """What to do when the module cannot run on examples of ``example_shape``."""
        return f"choose data this architecture takes (its default is {self.default_data})"

    # ---- a small instance of itself (the contract test builds one of every adapter) --------
    def example(self) -> tuple[dict[str, Any], DataInfo]:
        """Options and data shape of a small, quickly built instance."""
        return {}, self.example_data

    def example_batch(self, info: DataInfo, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw inputs and labels of ``n`` examples of that shape (before prepare_*)."""
        return torch.randn(n, *info.input_shape), torch.randint(0, info.num_classes, (n,))

    # ---- checkpoints with a config.json (transformers, timm) -------------------------------
    def claims_config(self, config: Mapping[str, Any]) -> bool:
        """True when a checkpoint folder's ``config.json`` describes this architecture."""
        return False

    def options_from_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """Options read off a ``config.json`` (used when --arch options are not given)."""
        return {}

    def unmap_keys(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The inverse of :meth:`map_keys`: module names back to the file's names."""
        return dict(tensors)

    def data_hooks(self, options: Any, folder: Any) -> DataHooks:
        """Tokenizer / transform for the data, read from the checkpoint's folder."""
        return DataHooks()

    # ---- options -------------------------------------------------------------------------
    def parse_options(self, given: Mapping[str, Any] | None = None) -> Any:
        """Validate and coerce option values (strings from the CLI, lists from JSON)."""
        given = dict(given or {})
        fields = {f.name: f for f in dataclasses.fields(self.Options)}
        unknown = sorted(set(given) - set(fields))
        if unknown:
            raise AdapterOptionError(
                f"--arch {self.name} has no option {', '.join(unknown)}; "
                f"its options: {', '.join(fields) or '(none)'}"
            )
        values = {}
        for key, value in given.items():
            parse = fields[key].metadata.get("parse")
            try:
                values[key] = parse(value) if parse else value
            except (TypeError, ValueError) as exc:
                raise AdapterOptionError(f"--arch {self.name}: bad value for {key}: {exc}") from exc
        opts = self.Options(**values)
        self.validate_options(opts)
        return opts

    def validate_options(self, options: Any) -> None:  # noqa: B027 (optional hook)
        """Raise :class:`AdapterOptionError` for inconsistent options."""

    def options_to_dict(self, options: Any) -> dict[str, Any]:
        return json_ready(dataclasses.asdict(options))

    def report_label(self, options: Mapping[str, Any]) -> str:
        """How the paper's tables name a run with these options (its ``scheme`` column,
        ``options`` as stored in run.json): BN or NBN, with or without batch norm."""
        return batch_norm_label(options)

    def infer_options(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """Options that can be read off a checkpoint's shapes (used when not given)."""
        return {}

    # ---- module --------------------------------------------------------------------------
    @abstractmethod
    def build(self, options: Any, data: DataInfo) -> nn.Module:
        """A freshly initialised module (seed torch's global RNG beforehand)."""

    def map_keys(
        self, tensors: Mapping[str, torch.Tensor], options: Any = None
    ) -> dict[str, torch.Tensor]:
        """Translate foreign checkpoint names to the module's (identity by default); the
        options, when known, may refine the mapping (renamed layers of hub models)."""
        return dict(tensors)

    def prepare_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """Shape a dataset's [N, C, H, W] inputs for the module (done once, not per alpha)."""
        return inputs

    def prepare_targets(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Targets of the loss, given the prepared inputs (labels by default)."""
        return targets

    # ---- objective -----------------------------------------------------------------------
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-example loss, shape [N] (cross-entropy by default)."""
        return nn.functional.cross_entropy(output, target, reduction="none")

    def logits(self, output: Any) -> torch.Tensor:
        """The vector whose curve the Gauss length measures, shape [N, D] (``output`` is the
        module's output: a tensor, or what a hub model returns)."""
        return output

    def correct(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        """Per-example correctness (bool [N], or a fraction per example such as the share of
        tokens predicted right), or None when accuracy is undefined."""
        return output.argmax(dim=1) == target

    def bn_modules(self, module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
        """The batch-norm layers whose statistics are re-estimated at each alpha."""
        return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


# Sequence models (language models): the Gauss length reads the logit vectors at this many
# evenly spaced token positions of each sequence, first and last included.
GAUSS_POSITIONS = 4


def gauss_positions(length: int, device: torch.device) -> torch.Tensor:
    """GAUSS_POSITIONS evenly spaced positions of a sequence (all of them if it is shorter)."""
    k = min(GAUSS_POSITIONS, length)
    return torch.linspace(0, length - 1, k, device=device).round().long()


def sequence_logits(output: torch.Tensor) -> torch.Tensor:
    """[N, L, V] logits -> the [N * k, V] logit vectors at :func:`gauss_positions`."""
    idx = gauss_positions(output.shape[1], output.device)
    return output[:, idx, :].reshape(-1, output.shape[-1])


def option(default: Any, help: str, parse: Any = None) -> Any:
    """A dataclass field with help text and an optional string parser."""
    meta = {"help": help}
    if parse is not None:
        meta["parse"] = parse
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples for sequence defaults")
    return dataclasses.field(default=default, metadata=meta)


def batch_norm_label(options: Mapping[str, Any]) -> str:
    """BN when the options build the batch-norm variant, else NBN (Tables 1-2)."""
    return "BN" if bool(options.get("bn", False)) else "NBN"


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected on/off, got {value!r}")


def parse_int_tuple(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(",") if p]
    else:
        parts = list(value)
    out = tuple(int(p) for p in parts)
    if any(v < 1 for v in out):
        raise ValueError(f"widths must be positive, got {value!r}")
    return out


def parse_choice(*choices: str) -> Any:
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return str(value)

    return parse


def json_ready(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    return obj


def load_into(
    module: nn.Module, tensors: Mapping[str, torch.Tensor], source: str, arch: str
) -> None:
    """Strictly copy a state dict into ``module``: one error lists every problem, sorted.

    Tied weights (one tensor under two names, e.g. a language model's input embedding and
    output head) may be stored once, as transformers does; the other name is filled in.
    """
    tensors = check_fits(module, tensors, source, arch)
    module.load_state_dict(dict(tensors), strict=True)


def check_fits(
    module: nn.Module, tensors: Mapping[str, torch.Tensor], source: str, arch: str
) -> dict[str, torch.Tensor]:
    """``tensors`` completed with the second names of tied weights, after checking that
    they fit ``module`` exactly: one error lists every missing, unexpected and mismatched
    key, sorted."""
    expected = module.state_dict()
    tensors = dict(tensors)
    for alias, canonical in tied_aliases(module).items():
        if alias not in tensors and canonical in tensors:
            tensors[alias] = tensors[canonical]
        elif canonical not in tensors and alias in tensors:
            tensors[canonical] = tensors[alias]
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mism = [
        f"{k} {tuple(tensors[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(tensors))
        if tensors[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {short_list(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {short_list(unexpected)}")
    if mism:
        problems.append(f"{len(mism)} shape mismatches (file vs model): {short_list(mism, 4)}")
    if problems:
        raise CheckpointMismatchError(
            f"{source} does not fit --arch {arch}: " + "; ".join(problems) + " (was it saved "
            "from another architecture or with other options? see `mliscan adapters`)"
        )
    return tensors


def fresh_init(
    adapter: Adapter, options: Any, info: DataInfo, seed: int
) -> dict[str, torch.Tensor]:
    """A new initialisation by the adapter's own scheme (torch's RNG seeded with ``seed``,
    inside ``fork_rng``: the caller's random state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = adapter.build(options, info)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def tied_aliases(module: nn.Module) -> dict[str, str]:
    """Second and later names of a shared parameter or buffer -> its first name (tied
    embeddings, a layer used at two places of a model)."""
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    named = [
        *module.named_parameters(remove_duplicate=False),
        *module.named_buffers(remove_duplicate=False),
    ]
    for name, p in named:
        if id(p) in first:
            out[name] = first[id(p)]
        else:
            first[id(p)] = name
    return out


def probe_forward(adapter: Adapter, module: nn.Module, x: torch.Tensor, data: str) -> None:
    """Run the module on two prepared examples before any real work: an architecture that
    cannot take this data (token ids into an image model, images into a language model,
    the wrong number of pixels) is a usage error naming both, not a crash later. Leaves the
    module in eval mode."""
    try:
        with torch.inference_mode():
            module.eval()(x[:2])
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        first = " ".join(str(exc).split())[:160]
        shape = tuple(x.shape[1:])
        named = "the data given" if data == "python" else f"--data {data}"
        raise DataError(
            f"{adapter.named_as()} cannot run on {named}, examples of shape {list(shape)} "
            f"({type(exc).__name__}: {first}); {adapter.data_hint(shape)}"
        ) from exc


def head_classes(tensors: Mapping[str, torch.Tensor], heads: tuple[str, ...]) -> dict[str, Any]:
    """``{"num_classes": N}`` read off the first of ``heads`` (output-layer weight names) that
    the checkpoint holds; ``{}`` when none (image-classifier adapters' infer_options)."""
    for key in heads:
        if key in tensors and tensors[key].dim() >= 2:
            return {"num_classes": int(tensors[key].shape[0])}
    return {}
