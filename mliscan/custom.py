"""Your own model, without an adapter plugin.

* :class:`ModuleAdapter` wraps an ``nn.Module`` given from Python (``mliscan.compare(...,
  model=net)``) and an optional per-example loss.
* :class:`FactoryAdapter` builds the model from ``--model module.path:factory`` with
  ``--model-arg KEY=VALUE`` (the module imported as ``python -m`` would, from the current
  directory).

Both are ordinary adapters: the engine treats them like the built-in ones. Their module's
output is the logits; the loss defaults to cross-entropy per example, accuracy to argmax.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import importlib
import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mliscan.adapter import Adapter, DataInfo
from mliscan.errors import AdapterOptionError, UsageError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OutputFn = Callable[[Any], torch.Tensor]


def logits_of(output: Any) -> torch.Tensor:
    """The logits in a module's output: the tensor itself, ``output["logits"]`` of a dict,
    ``output.logits`` of a transformers ``ModelOutput`` or similar object, the first element
    of a tuple or list. Anything else is a usage error that names ``output=``."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    found = getattr(output, "logits", None)
    if isinstance(found, torch.Tensor):
        return found
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    keys = f" with keys {sorted(map(str, output))[:6]}" if isinstance(output, Mapping) else ""
    raise UsageError(
        f"the model returned {type(output).__name__}{keys}, not logits: return a tensor, a "
        "dict or ModelOutput with 'logits', or a tuple whose first element is the logits; "
        "or pass output= (a function from the model's output to the logits)"
    )


class _Given(Adapter):
    """Shared by the two: a module from outside, a loss that may be the user's, and where
    the logits sit in its output (:func:`logits_of`, or the user's ``output``)."""

    name = "custom"
    description = "a model given by the user"
    trainable = False

    def __init__(self, loss: LossFn | None = None, output: OutputFn | None = None) -> None:
        self._loss = loss
        self._output = output

    def logits(self, output: Any) -> torch.Tensor:
        if self._output is None:
            return logits_of(output)
        value = self._output(output)
        if not isinstance(value, torch.Tensor):
            raise UsageError(
                f"output= must return the logits as a tensor, got {type(value).__name__}"
            )
        return value

    def parse_options(self, given: Mapping[str, Any] | None = None) -> Any:
        return dict(given or {})

    def options_to_dict(self, options: Any) -> dict[str, Any]:
        return {
            k: v if isinstance(v, (int, float, str, bool)) else repr(v) for k, v in options.items()
        }

    def loss(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        output = self.logits(output)
        if self._loss is None:
            return nn.functional.cross_entropy(output, target, reduction="none")
        value = self._loss(output, target)
        if not isinstance(value, torch.Tensor) or value.dim() != 1:
            raise UsageError(
                "loss= must return one loss per example (a 1-D tensor, reduction='none'), got "
                f"{type(value).__name__} of shape {tuple(getattr(value, 'shape', ()))}"
            )
        return value

    def correct(self, output: Any, target: torch.Tensor) -> torch.Tensor | None:
        output = self.logits(output)
        if output.dim() != 2 or target.dim() != 1 or target.is_floating_point():
            return None  # accuracy only for class labels
        return output.argmax(dim=1) == target


class ModuleAdapter(_Given):
    """An ``nn.Module`` from Python: each build returns a deep copy (the user's module is
    never modified). ``input_shape``: the shape of one example as the module takes it
    (``(64,)`` for a module on flat digits; -1 for one dimension inferred), when the
    data's own layout (images ``[C, H, W]``) is not the module's."""

    name = "module"

    def __init__(
        self,
        module: nn.Module,
        loss: LossFn | None = None,
        output: OutputFn | None = None,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__(loss, output)
        self.module = module
        self.input_shape = None if input_shape is None else tuple(input_shape)

    def named_as(self) -> str:
        return "model="

    def data_hint(self, example_shape: tuple[int, ...]) -> str:
        if self.input_shape is not None:
            return f"input_shape={self.input_shape} makes each example {list(example_shape)}"
        if len(example_shape) > 1:
            flat = math.prod(example_shape)
            return (
                f"if the module takes flat inputs, pass input_shape=({flat},) (or begin it "
                "with nn.Flatten()); otherwise input_shape= the shape one example takes"
            )
        return "pass input_shape= (the shape one example takes) or data= that fits the module"

    def prepare_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.input_shape is None:
            return inputs
        try:
            return inputs.reshape(len(inputs), *self.input_shape)
        except RuntimeError as exc:
            raise UsageError(
                f"input_shape={self.input_shape} does not fit examples of shape "
                f"{list(inputs.shape[1:])} ({math.prod(inputs.shape[1:])} values each)"
            ) from exc

    def build(self, options: Any, info: DataInfo) -> nn.Module:
        try:
            return copy.deepcopy(self.module)
        except RuntimeError as exc:
            if "deepcopy" not in str(exc):
                raise
            # old-style weight_norm / spectral_norm keep a computed, non-leaf weight that
            # cannot be deep-copied; it is recomputed by the module's pre-hook on every call
            return _copy_recomputed(self.module, exc)


def _copy_recomputed(module: nn.Module, exc: RuntimeError) -> nn.Module:
    """A deep copy of a module whose attributes include tensors that autograd computed
    (old-style ``torch.nn.utils.weight_norm`` leaves ``weight = g * v / ||v||`` with a
    graph): those are detached first (the module's pre-hook recomputes them from the
    parameters on every call, so their value is never read), then restored."""
    computed = []
    for m in module.modules():
        for name, value in list(vars(m).items()):
            if isinstance(value, torch.Tensor) and value.grad_fn is not None:
                computed.append((m, name, value))
    if not computed:
        raise UsageError(
            f"model= cannot be copied ({' '.join(str(exc).split())[:160]}); pass a module "
            "whose tensors are parameters or buffers"
        ) from exc
    try:
        for m, name, value in computed:
            setattr(m, name, value.detach())
        return copy.deepcopy(module)
    finally:
        for m, name, value in computed:
            setattr(m, name, value)


def parse_value(text: str) -> Any:
    """A --model-arg value: a Python literal (3, 0.5, True, 'a', [64, 64]) or plain text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_model_args(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise UsageError(f"--model-arg expects KEY=VALUE with KEY a Python name, got {item!r}")
        out[key.strip()] = parse_value(value.strip())
    return out


@contextlib.contextmanager
def importable_from(folder: str) -> Iterator[None]:
    """``folder`` first on ``sys.path`` for the block (as ``python -m`` puts the current
    directory), then ``sys.path`` as it was: the caller's process keeps its own path."""
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(folder)


def load_factory(spec: str, folder: str | None = None) -> Callable[..., nn.Module]:
    """``module.path:factory`` imported as ``python -m`` would (``folder``, by default the
    current directory, first on the path while importing; the path is restored after)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"--model expects module.path:factory, got {spec!r}")
    try:
        with importable_from(folder or str(Path.cwd())):
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(
            f"--model {spec}: cannot import {module_name} ({exc}); run from the folder that "
            "holds it, or install its package"
        ) from exc
    except Exception as exc:  # the user's module failed while importing: their error
        raise UsageError(
            f"--model {spec}: importing {module_name} raised {type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]}"
        ) from exc
    factory: Any = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise UsageError(f"--model {spec}: {module_name} has no {attr}")
    if not callable(factory):
        raise UsageError(f"--model {spec}: {attr} is not callable")
    return factory


class FactoryAdapter(_Given):
    """``--model module.path:factory --model-arg KEY=VALUE``: calls ``factory(**args)``."""

    name = "model"

    def named_as(self) -> str:
        return f"--model {self.spec}"

    def data_hint(self, example_shape: tuple[int, ...]) -> str:
        if len(example_shape) > 1:
            return (
                f"the data's examples are {list(example_shape)}; if the module takes flat "
                "inputs, begin it with nn.Flatten()"
            )
        return "choose --data that fits the module"

    def __init__(self, spec: str, args: Mapping[str, Any], loss: LossFn | None = None) -> None:
        super().__init__(loss)
        self.spec = spec
        self.folder = str(Path.cwd())
        self.factory = load_factory(spec, self.folder)
        self.args = dict(args)

    def parse_options(self, given: Mapping[str, Any] | None = None) -> Any:
        return {**self.args, **dict(given or {})}

    def build(self, options: Any, info: DataInfo) -> nn.Module:
        try:
            with importable_from(self.folder):  # a factory may import its siblings lazily
                module = self.factory(**options)
        except TypeError as exc:
            raise AdapterOptionError(f"--model {self.spec}: {exc} (check --model-arg)") from exc
        except Exception as exc:  # the user's factory failed: their error, named as such
            raise AdapterOptionError(
                f"--model {self.spec}: the factory raised {type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:200]}"
            ) from exc
        if not isinstance(module, nn.Module):
            raise UsageError(
                f"--model {self.spec} returned {type(module).__name__}, not a torch nn.Module"
            )
        return module
