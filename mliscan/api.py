"""The Python API: ``mliscan.compare``, ``mliscan.grid`` and ``mliscan.track``.

The same specs and the same runner as the command line: every option of ``mliscan compare``
is an argument of the same name (``--bn-mode`` is ``bn_mode=``; ``CLI_ONLY`` lists the few
that Python says otherwise), a value a command would refuse is refused here with the same
message in Python's words (naming the argument), and the same inputs give the same numbers
as ``mliscan compare``. Inside a call, torch's deprecation noise is kept out as on the
command line, with the caller's warning filters restored on return.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mliscan import spec as S
from mliscan.checkpoints import Checkpoint, check_finite
from mliscan.custom import LossFn, ModuleAdapter, OutputFn
from mliscan.data import DATASETS, Dataset
from mliscan.errors import LIBRARY_NOISE, DataError, MliscanError, UsageError
from mliscan.pipeline import compare_checkpoints, open_source
from mliscan.registry import arch_flags
from mliscan.results import PathResult
from mliscan.runners.events import Events
from mliscan.runners.pair import PairStudy, run_pair
from mliscan.schemas import (
    CURVE_SCHEMA,
    PATH_SCHEMA,
    PLANE_SCHEMA,
    TRAJECTORY_SCHEMA,
    polars_schema,
)

Endpoint = str | Path | nn.Module | dict
Data = str | tuple | torch.utils.data.Dataset | torch.utils.data.DataLoader | None

# The concerns whose options ``compare`` takes: each field is an argument under its
# command-line name (``--bn-mode`` is ``bn_mode=``, ``spec.argument_name``), so a Python
# call and ``mliscan compare`` are built from the same declarations.
CONCERNS: tuple[type, ...] = (
    S.SourceSpec,
    S.DataSpec,
    S.BNSpec,
    S.EvalSpec,
    S.VerdictSpec,
    S.AlignSpec,
)


# The command line's options that Python says another way (the option: its Python form).
def _flag_form(flag: S.AdapterFlag) -> str:
    """An adapter flag's Python form: ``--init-scheme fixup`` is ``arch_options={'init':
    'fixup'}``."""
    key = flag.key or flag.name
    example = re.search(r"e\.g\. (\S+?)\.?$", flag.help)  # "... widths, e.g. 128,128."
    value = (
        "True"
        if flag.boolean
        else repr(flag.choices[-1])
        if flag.choices
        else repr(example.group(1))
        if example
        else "VALUE"
    )
    return f"arch_options={{{key!r}: {value}}}"


# The adapters' own flags (``--hidden``, ``--bn``, ...: ``Adapter.flags``) are arch_options.
CLI_ONLY = {flag.name: _flag_form(flag) for flag in arch_flags()}
CLI_ONLY |= {
    "arch_opt": "arch_options={KEY: VALUE}",
    "model": "model= (the nn.Module itself, instead of MODULE:FACTORY)",
    "model_arg": "model= (build the module yourself)",
    "unrelated_seed": "unrelated=[SEEDS]",
    "json": "result.to_dict()",
    "plot": "result.plot(PATH)",
    "quiet": "progress= (None: no progress)",
    "config": "the arguments themselves",
    "require_monotonic": "result.monotonic",
    "fail_on_nonmonotonic": "result.monotonic",
    "max_delta": "result.min_delta",
    "max_gauss_length": "result.gauss_length",
    "max_barrier": "result.barrier",
    "min_final_accuracy": "result.accuracy[-1]",
}
# Python-only arguments of compare (no command-line option: objects, not text).
PYTHON_ONLY = ("model", "arch_options", "loss", "output", "input_shape", "progress")


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    """The command-line fields of a concern, by their argument name."""
    return {
        S.argument_name(f): f
        for f in dataclasses.fields(cls)
        if (o := S.option_of(f)) is not None and o.cli
    }


def _options(values: dict[str, Any], extra: tuple[type, ...] = ()) -> dict[type, Any]:
    """Each concern (``CONCERNS`` and a study's own, ``extra``) built from the arguments
    named after its fields (errors name the argument, ``alphas=``, not the flag)."""
    built: dict[type, Any] = {}
    for cls in (*CONCERNS, *extra):
        given: dict[str, Any] = {}
        where: dict[str, str] = {}
        for name, f in _fields(cls).items():
            if name not in values:
                continue
            value = values[name]
            o = S.option_of(f)
            if o is not None and o.parse is not None and isinstance(value, str):
                try:
                    value = o.parse(value)
                except S.SpecError as exc:
                    raise S.SpecError(f"{name}=", exc.problem, f.name) from None
            if isinstance(value, list):
                value = tuple(value)
            if isinstance(value, Path):  # data_dir=Path(...), data_file=Path(...)
                value = str(value)
            given[f.name] = value
            where[f.name] = f"{name}="
        if cls is S.EvalSpec:
            given["bn"] = built[S.BNSpec]
        built[cls] = S.build(cls, given, where)
    return built


# The argument each command-line flag is in Python, for messages from the layers below
# (which speak the command line's words): ``--data-limit`` -> ``data_limit=``.
_FLAG_WORDS = {
    S.flag_of(f): f"{name}="
    for cls in (*CONCERNS, S.ArchSpec)
    for name, f in _fields(cls).items()
    if name not in CLI_ONLY
}
for _f in arch_flags():
    _FLAG_WORDS["--" + _f.name.replace("_", "-")] = f"arch_options[{(_f.key or _f.name)!r}]"
    if _f.negative:
        _FLAG_WORDS[_f.negative] = f"arch_options[{(_f.key or _f.name)!r}]=False"
_FLAG_WORDS.update({"--arch-opt": "arch_options", "--unrelated": "unrelated="})
_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*[a-z0-9])(?: ([\w.:@/,+-]*[\w/]))?")
# Words after a flag that are the sentence going on, not the flag's value.
_NOT_VALUES = frozenset(
    "a also an and are as at by cannot does first for from has here in instead is its must "  # noqa: SIM905
    "needs not of on or takes the to too was when with".split()
)


def _python_words(text: str) -> str:
    """A message of the layers below in Python's words: ``--arch mlp`` is ``arch='mlp'``,
    ``--data-limit`` is ``data_limit=``; flags Python has no argument for stay as written."""

    def swap(m: re.Match[str]) -> str:
        flag, value = m.group(1), m.group(2)
        word = _FLAG_WORDS.get(flag)
        if word is None:
            return m.group(0)
        if value is None or value in _NOT_VALUES or not word.endswith("="):
            return word + ("" if value is None else f" {value}")
        plain = _is_number(value) or value.isupper()  # 0.01, or a metavar such as N or DIR
        return f"{word}{value}" if plain else f"{word}{value!r}"

    return _FLAG.sub(swap, text)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@contextmanager
def _in_python_words() -> Iterator[None]:
    """mliscan's errors raised inside the block reworded for a Python caller (the same
    exception, its type kept), and third-party deprecation noise (torch's FutureWarnings,
    ``torch.jit.script`` in the libraries mliscan calls) kept out, like the command line
    does; the caller's warning filters are restored on exit."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=LIBRARY_NOISE)
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch(\.|$)")
            yield
    except MliscanError as exc:
        if exc.args and isinstance(exc.args[0], str):
            exc.args = (_python_words(exc.args[0]), *exc.args[1:])
            if isinstance(exc, S.SpecError):
                exc.where, exc.problem = _python_words(exc.where), _python_words(exc.problem)
        raise


def _renamed(options: dict[str, Any], function: str, stacklevel: int = 3) -> dict[str, Any]:
    """Arguments of another meaning or name: ``bn=`` (the batch-norm statistics mode, now
    ``bn_mode=`` as on the command line, where --bn builds the batch-norm variant) is
    taken with a DeprecationWarning; an unknown argument is a TypeError with the likely
    one, or the Python form of a command-line option."""
    options = dict(options)
    if "bn" in options:
        value = options.pop("bn")
        warnings.warn(
            f"{function}(bn=...) is deprecated: the batch-norm statistics mode is bn_mode= "
            "(--bn-mode on the command line); the batch-norm variant of an architecture is "
            "arch_options={'bn': True}",
            DeprecationWarning,
            stacklevel=stacklevel,
        )
        if "bn_mode" in options:
            raise TypeError(f"{function}() takes bn_mode= (bn= is its old name), not both")
        options["bn_mode"] = value
    for name in options:
        if name not in _ARGUMENTS:
            raise TypeError(
                f"{function}() got an unexpected keyword argument {name!r}; {_hint(name)}"
            )
    return options


def _hint(name: str) -> str:
    if name in CLI_ONLY:
        return f"the command line's --{name.replace('_', '-')} is {CLI_ONLY[name]} in Python"
    close = difflib.get_close_matches(name, sorted(_ARGUMENTS), n=3, cutoff=0.6)
    if close:
        return "did you mean " + " or ".join(f"{c}=" for c in close) + "?"
    return "see help(mliscan.compare) for the arguments"


def _checkpoint(x: Endpoint, role: str, source: S.SourceSpec) -> Checkpoint:
    """A path or source string, a state dict, or a module's current weights."""
    if isinstance(x, (str, Path)):
        return open_source(str(x), source.trust_pickle, source.offline, source.ema)
    if isinstance(x, nn.Module):
        tensors = {k: v.detach().cpu().clone() for k, v in x.state_dict().items()}
    elif isinstance(x, dict):
        bad = [k for k, v in x.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise UsageError(f"{role}: a state dict maps names to tensors; {bad[0]!r} does not")
        tensors = {k: v.detach().cpu() for k, v in x.items()}
    else:
        raise UsageError(
            f"{role}: expected a path, a source string (hf:, timm:, init:), a state dict or an "
            f"nn.Module, got {type(x).__name__}"
        )
    ckpt = Checkpoint(path=Path(f"<{role}>"), tensors=tensors)
    check_finite(ckpt)
    return ckpt


# An endless DataLoader (or a huge one) is read up to this many examples when data_limit= is
# not given: past it, the call stops with a usage error asking for data_limit= instead of
# reading until memory runs out.
MAX_LOADER_EXAMPLES = 1_000_000


def _check_arguments(model: Any, loss: Any, data: Any, data_limit: Any) -> None:
    """The Python arguments the command line has no flag for, checked before any work."""
    if model is not None:
        if not isinstance(model, nn.Module):
            raise UsageError(f"model= takes a torch nn.Module, got {type(model).__name__}")
        meta = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
        if meta:
            raise UsageError(
                f"model= has tensors on the meta device (no values), e.g. {meta[0]}: "
                "materialise the model (to_empty() and load its weights) first"
            )
    if loss is not None and not callable(loss):
        raise UsageError(f"loss= takes a function, got {type(loss).__name__}")
    S.build(S.DataSpec, {"limit": data_limit}, {"limit": "data_limit="})  # type and range
    if isinstance(data, str) and data not in DATASETS:
        raise UsageError(f"data={data!r}: not a dataset name; one of {', '.join(DATASETS)}")
    kinds = (str, tuple, torch.utils.data.Dataset, torch.utils.data.DataLoader)
    if data is not None and not isinstance(data, kinds):
        raise UsageError(
            "data= takes a dataset name, a tuple (X, y) of tensors, a torch Dataset or a "
            f"DataLoader, got {type(data).__name__}"
        )


def _batches(data: Any, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A Dataset's or DataLoader's (inputs, targets), every batch of the same shapes."""
    if isinstance(data, torch.utils.data.DataLoader):
        items: Any = data
    else:
        items = torch.utils.data.DataLoader(data, batch_size=256, shuffle=False)
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    count = 0
    for i, batch in enumerate(items):
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise UsageError("data= must yield (inputs, targets) pairs")
        x = batch[0]
        try:
            y = torch.as_tensor(batch[1])
        except (TypeError, ValueError, RuntimeError) as exc:
            raise UsageError(f"data=: the targets of batch {i} are not a tensor ({exc})") from exc
        if not isinstance(x, torch.Tensor) or x.dim() == 0 or y.dim() == 0 or len(x) != len(y):
            raise UsageError(
                f"data=: batch {i} must be (inputs, targets) tensors with one row per example, "
                f"got {type(x).__name__} {tuple(getattr(x, 'shape', ()))} and targets "
                f"{tuple(y.shape)}"
            )
        if xs and (x.shape[1:] != xs[0].shape[1:] or y.shape[1:] != ys[0].shape[1:]):
            raise UsageError(
                f"data=: batch {i} holds inputs {tuple(x.shape[1:])} and targets "
                f"{tuple(y.shape[1:])} per example, batch 0 {tuple(xs[0].shape[1:])} and "
                f"{tuple(ys[0].shape[1:])}: every example needs the same shape (pad or crop)"
            )
        xs.append(x)
        ys.append(y)
        count += len(x)
        if limit is not None and count >= limit:
            break
        if limit is None and count > MAX_LOADER_EXAMPLES:
            raise UsageError(
                f"data= yielded more than {MAX_LOADER_EXAMPLES:,} examples without ending "
                "(an endless loader?): pass data_limit=N"
            )
    if not xs:
        raise DataError("data= holds no examples")
    return torch.cat(xs), torch.cat(ys)


def _dataset(data: Data, limit: int | None, class_targets: bool = False) -> Dataset | None:
    """Tensors (X, y), a torch Dataset or a DataLoader as an in-memory dataset.

    ``class_targets``: the loss is the default cross-entropy of a ``model=``, so the targets
    must be class indices (one integer >= 0 per example)."""
    if data is None or isinstance(data, str):
        return None
    if isinstance(data, tuple):
        if len(data) != 2 or not all(isinstance(t, torch.Tensor) for t in data):
            raise UsageError("data=(X, y) takes two tensors: inputs and targets")
        x, y = data
        if x.dim() == 0 or y.dim() == 0 or len(x) != len(y):
            raise DataError(
                f"data=(X, y): {tuple(x.shape)} inputs and {tuple(y.shape)} targets; both need "
                "one row per example"
            )
    else:
        x, y = _batches(data, limit)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    if len(x) != len(y) or len(x) == 0:
        raise DataError(f"data=: {len(x)} inputs but {len(y)} targets")
    if x.is_meta or y.is_meta:
        raise UsageError("data= holds meta tensors (no values)")
    if class_targets:
        _check_class_targets(y)
    if x.is_floating_point():
        x = x.float()
    classes = int(y.max()) + 1 if not y.is_floating_point() and y.dim() == 1 else 0
    return Dataset("python", "train", x.contiguous(), y, classes)


def _check_class_targets(y: torch.Tensor) -> None:
    """Targets of the default loss (cross-entropy): one class index >= 0 per example."""
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or y.dim() != 1:
        raise UsageError(
            f"data=: the targets are {str(y.dtype).removeprefix('torch.')} of shape "
            f"{tuple(y.shape)}; the default loss (cross-entropy) takes one class index per "
            "example (a 1-D integer tensor, e.g. y.long()); give loss= for other targets"
        )
    if int(y.min()) < 0:
        raise UsageError(f"data=: class indices must be >= 0, found {int(y.min())}")


def _per_example(loss: LossFn | None, classes: int) -> LossFn:
    """The loss of a ``model=``, checked on its first call: the default cross-entropy with
    every class index below the model's output width, a user's loss one value per example."""

    def checked(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if loss is None:
            if output.dim() == 2 and output.shape[1] < classes:
                raise UsageError(
                    f"data=: the targets go up to class {classes - 1}, but the model has "
                    f"{output.shape[1]} outputs"
                )
            return nn.functional.cross_entropy(output, target, reduction="none")
        value = loss(output, target)
        if isinstance(value, torch.Tensor) and value.dim() == 1 and len(value) != len(target):
            raise UsageError(
                f"loss= returned {len(value)} values for a batch of {len(target)} examples; it "
                "must give one loss per example (reduction='none')"
            )
        return value

    return checked


def compare(
    init: Endpoint,
    final: Endpoint,
    *,
    model: nn.Module | None = None,
    arch: str | None = None,
    arch_options: dict[str, Any] | None = None,
    data: Data = None,
    data_dir: str | Path | None = None,
    split: str = "train",
    data_limit: int | None = None,
    data_file: str | Path | None = None,
    seq_len: int | None = None,
    max_tokens: int | None = S.DEFAULT_MAX_TOKENS,
    loss: LossFn | None = None,
    output: OutputFn | None = None,
    input_shape: Sequence[int] | None = None,
    alphas: int = S.DEFAULT_ALPHAS,
    gauss: bool = True,
    gauss_examples: int | None = None,
    gauss_method: str = "auto",
    tol: float = S.DEFAULT_TOLERANCE,
    bn_mode: str = "exact",
    bn_batch_size: int | str | None = S.DEFAULT_BN_BATCH_SIZE,
    bn_warmup_batches: int | None = None,
    bn_variance: str = "population",
    batch_size: int | None = S.DEFAULT_EVAL_BATCH_SIZE,
    alpha_chunk: int = 1,
    dtype: str = "float32",
    device: str = "auto",
    amp: str = "off",
    compile: bool = False,
    align: str = "none",
    unrelated: int | Sequence[int] = 0,
    offline: bool = False,
    trust_pickle: bool = False,
    ema: bool = False,
    progress: Callable[[int, float, float], None] | None = None,
    **renamed: Any,
) -> PathResult:
    """The straight path from ``init`` (alpha = 0) to ``final`` (alpha = 1).

    ``init``/``final``: a checkpoint file or folder, a source string (``hf:ORG/NAME@REV``,
    ``timm:NAME``, ``init:SOURCE``), a state dict, or an ``nn.Module`` (its current weights).
    ``model``: an ``nn.Module`` used as the architecture (no adapter needed; its output is
    the logits); otherwise ``arch`` names an adapter (with ``arch_options``, e.g.
    ``{"hidden": "128,128", "bn": True}``), or the files' metadata does.
    ``data``: a dataset name (``"digits"``), a torch Dataset or DataLoader of (input,
    target) pairs, or a tuple of tensors ``(X, y)``. ``loss``: a callable giving one loss
    per example (cross-entropy by default). ``output``: a callable from ``model``'s output
    to its logits (by default the output itself, ``output["logits"]`` / ``output.logits``,
    or a tuple's first element). ``input_shape``: the shape one example takes in ``model``
    when the data's layout is another (``(64,)`` for a module on flat 8x8 digits).
    ``unrelated``: K fresh initialisations (seeds 0..K-1), or a list of seeds, also
    interpolated to ``final`` (Figure 6). ``progress(i, alpha, loss)`` is called per alpha.

    Every other argument is the option of ``mliscan compare`` of the same name
    (``bn_mode=`` is ``--bn-mode``; see ``mliscan compare --help-all``) with the same
    default, checks and numbers; ``CLI_ONLY`` lists the options Python says otherwise.

    Returns a :class:`mliscan.PathResult` (``.min_delta``, ``.monotonic``, ``.distance``,
    ``.normalized_distance``, ``.gauss_length``, ``.barrier``, ``.to_dict()``,
    ``.topolars_schema()``, ``.plot()``).

    Example::

        import mliscan, torch
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        init = {k: v.clone() for k, v in net.state_dict().items()}
        # ... train net ...
        r = mliscan.compare(init, net, model=net, data=(X, y), alphas=25)
        print(r.min_delta, r.monotonic, r.barrier)
    """
    if renamed:
        moved = _renamed(renamed, "compare")
        if bn_mode != "exact":
            raise TypeError("compare() takes bn_mode= (bn= is its old name), not both")
        bn_mode = moved["bn_mode"]
    values = {k: v for k, v in locals().items() if k not in ("init", "final", "renamed")}
    with _in_python_words():
        return _compare(init, final, values)


def _compare(init: Endpoint, final: Endpoint, v: dict[str, Any]) -> PathResult:
    prep = _prepared(v, {})
    seeds = _unrelated_seeds(v["unrelated"])
    ev, verdict = prep.specs[S.EvalSpec], prep.specs[S.VerdictSpec]
    source, align = prep.specs[S.SourceSpec], prep.specs[S.AlignSpec]
    plain = isinstance(init, (str, Path)) and isinstance(final, (str, Path))
    if plain and not isinstance(prep.arch, ModuleAdapter) and isinstance(prep.data, S.DataSpec):
        study = PairStudy(  # exactly what the command line runs
            str(init),
            str(final),
            **prep.study_fields(),
            verdict=verdict,
            align=align,
            unrelated_seeds=tuple(seeds),
        )
        return run_pair(study, v["progress"])
    a = _checkpoint(init, "init", source)
    b = _checkpoint(final, "final", source)
    return compare_checkpoints(
        a,
        b,
        arch=prep.arch,
        arch_options=prep.arch_options,
        data=prep.data,
        spec=ev,
        tolerance=verdict.tol,
        progress=v["progress"],
        unrelated_seeds=seeds,
        align=align.align,
    )


def _check_python_only(model: Any, arch: Any, loss: Any, output: Any, input_shape: Any) -> None:
    """The arguments the command line has no option for, against each other."""
    if model is not None and arch is not None:
        raise UsageError("model= takes the place of arch=: give one of them")
    if model is None:
        own = {"loss": "losses", "output": "logits", "input_shape": "input layouts"}
        for name, value in (("loss", loss), ("output", output), ("input_shape", input_shape)):
            if value is not None:
                raise UsageError(
                    f"{name}= goes with model= (the adapters define their own {own[name]})"
                )
    if output is not None and not callable(output):
        raise UsageError(f"output= takes a function, got {type(output).__name__}")
    if input_shape is not None and (
        not isinstance(input_shape, (tuple, list))
        or not input_shape
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in input_shape)
        or any(d < 1 and d != -1 for d in input_shape)
        or list(input_shape).count(-1) > 1
    ):
        raise UsageError(
            "input_shape= takes the shape of one example as a tuple of whole numbers >= 1 "
            f"(at most one -1), e.g. (64,); got {input_shape!r}"
        )


# As the command line's --unrelated K.
MAX_UNRELATED = 10_000


def _unrelated_seeds(unrelated: Any) -> list[int]:
    """unrelated=K (seeds 0..K-1) or a list of seeds."""
    if isinstance(unrelated, int) and not isinstance(unrelated, bool):
        if not 0 <= unrelated <= MAX_UNRELATED:
            raise UsageError(f"unrelated=: must be 0 to {MAX_UNRELATED}, got {unrelated}")
        return list(range(unrelated))
    if isinstance(unrelated, (list, tuple, range)) and all(
        isinstance(s, int) and not isinstance(s, bool) for s in unrelated
    ):
        if len(unrelated) > MAX_UNRELATED:
            raise UsageError(f"unrelated=: at most {MAX_UNRELATED} seeds, got {len(unrelated)}")
        return list(unrelated)
    raise UsageError(
        f"unrelated= takes a count K or a list of seeds, got {type(unrelated).__name__}"
    )


# Every keyword argument of compare (grid and track pass theirs on to it).
_ARGUMENTS = frozenset(inspect.signature(compare).parameters) - {"init", "final", "renamed"}
# Their defaults (what a study runs with when an argument is not given).
_COMPARE_DEFAULTS = {
    name: p.default
    for name, p in inspect.signature(compare).parameters.items()
    if name in _ARGUMENTS
}


def _prepared(values: dict[str, Any], defaults: dict[str, Any]) -> _Prepared:
    """The arguments of a study as the runners take them: the specs (the study's defaults
    where the caller gave none), the architecture (an adapter name, or a ``model=``'s
    adapter) and the data (a name's DataSpec, or the tensors given)."""
    values = {**values}
    for name, default in defaults.items():
        if values.get(name, _UNSET) is _UNSET:
            values[name] = default
    values = {k: v for k, v in values.items() if v is not _UNSET}
    full = {**_COMPARE_DEFAULTS, **values}
    model, loss, output, data = full["model"], full["loss"], full["output"], full["data"]
    arch, data_limit, input_shape = full["arch"], full["data_limit"], full["input_shape"]
    _check_arguments(model, loss, data, data_limit)
    _check_python_only(model, arch, loss, output, input_shape)
    specs = _options({**full, "data": data if isinstance(data, str) else None})
    dataset = _dataset(data, data_limit, class_targets=model is not None and loss is None)
    if model is not None and dataset is not None:
        loss = _per_example(loss, dataset.num_classes)
    adapter: Any = ModuleAdapter(model, loss, output, input_shape) if model is not None else None
    return _Prepared(
        specs,
        adapter if adapter is not None else arch,
        full["arch_options"],
        dataset if dataset is not None else specs[S.DataSpec],
    )


@dataclass
class _Prepared:
    specs: dict[type, Any]
    arch: Any
    arch_options: dict[str, Any] | None
    data: Any

    def study_fields(self) -> dict[str, Any]:
        """The fields every study description takes from the options: where endpoints come
        from, the architecture, the data and the evaluation."""
        return {
            "source": self.specs[S.SourceSpec],
            "arch": self.arch,
            "arch_options": self.arch_options,
            "data": self.data,
            "eval": self.specs[S.EvalSpec],
        }


class _Unset:
    def __repr__(self) -> str:
        return "<default>"


_UNSET: Any = _Unset()


class _Progress(Events):
    """A study's progress as ``progress(done, total, unit)`` calls."""

    def __init__(self, call: Callable[[int, int, str], None] | None) -> None:
        self.call = call

    @contextmanager
    def progress(self, total: int, unit: str) -> Iterator[Callable[..., None]]:
        done = 0

        def tick(item: str | None = None) -> None:
            nonlocal done
            done += 1
            if self.call is not None:
                self.call(done, total, unit)

        yield tick


def _study_endpoint(x: Endpoint, role: str, source: S.SourceSpec) -> str | Checkpoint:
    """A path or source as text (opened by the runner, as on the command line); a state
    dict or a module as a checkpoint named ``role``."""
    if isinstance(x, (str, Path)):
        return str(x)
    return _checkpoint(x, role, source)


def _endpoints(value: Any, name: str) -> list[Endpoint]:
    if value is None:
        return []
    if isinstance(value, (str, Path, nn.Module, dict)):
        singular = "init" if name == "inits" else "optimum"
        raise UsageError(
            f"grid: {name} takes a list of endpoints, got one {type(value).__name__} "
            f"(write [{singular}])"
        )
    return list(value)


@contextmanager
def _store(out: str | Path | None) -> Iterator[Path]:
    """The study's result folder: ``out`` (kept, so a call resumes), or a temporary one
    removed when the block ends."""
    if out is not None:
        if not isinstance(out, (str, Path)):
            raise UsageError(f"out= takes a folder path, got {type(out).__name__}")
        yield Path(out)
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mliscan-") as tmp:
        yield Path(tmp)


def grid(
    inits: Sequence[Endpoint] | None = None,
    optima: Sequence[Endpoint] | None = None,
    *,
    runs: Sequence[str | Path] = (),
    n_inits: int | None = None,
    n_optima: int | None = None,
    out: str | Path | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """Every init-init, init-optimum and optimum-optimum path (Figure 8): ``mliscan grid``'s
    runner, with its defaults (no Gauss length, batch size 1024) and its numbers.

    ``inits``/``optima``: endpoints as in :func:`compare` (paths, sources, state dicts,
    modules); ``runs``: folders of ``mliscan train`` runs (their init and final weights);
    ``n_inits``/``n_optima`` as ``--inits``/``--optima`` (fresh initialisations are sampled
    past the given ones). ``out``: the result store (``paths/*.json``, ``paths.parquet``,
    ``curves.parquet``): a second call with the same ``out`` resumes, computing only the
    paths not stored; without it the store is temporary. ``align="weight-matching"`` aligns
    each path's second endpoint to its first. ``progress(done, total, "paths")`` is called
    per path. Every other argument is :func:`compare`'s (``model=``, ``data=``,
    ``alphas=``, ``bn_mode=``, ...); ``unrelated=`` is compare's only.

    Returns two polars frames: one row per path (``paths.parquet``'s columns: family, a, b,
    own_pair, min_delta, monotonic, barrier, distance, ...) and one row per path and alpha.

    Example::

        paths, curves = mliscan.grid(["a/init.safetensors", "b/init.safetensors"],
                                     ["a/final.safetensors"], alphas=25, out="grid-out")
    """
    import polars as pl

    from mliscan.runners import GRID_DEFAULTS, MAX_ENDPOINTS
    from mliscan.runners.grid import GridStudy, run_grid

    given_i, given_o = _endpoints(inits, "inits"), _endpoints(optima, "optima")
    kwargs = _renamed(kwargs, "grid")
    if kwargs.get("unrelated"):
        raise UsageError("grid: unrelated= is compare()'s (Figure 6); a grid has n_inits=")
    for name, n in (("n_inits", n_inits), ("n_optima", n_optima)):
        if n is not None and (
            not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_ENDPOINTS
        ):
            raise UsageError(f"grid: {name}= takes a count from 0 to {MAX_ENDPOINTS}, got {n!r}")
    with _in_python_words():
        prep = _prepared(kwargs, GRID_DEFAULTS)
        source = prep.specs[S.SourceSpec]
        with _store(out) as root:
            study = GridStudy(
                out=root,
                runs=tuple(Path(r) for r in runs),
                inits=tuple(_study_endpoint(x, f"init{i}", source) for i, x in enumerate(given_i)),
                optima=tuple(
                    _study_endpoint(x, f"optimum{i}", source) for i, x in enumerate(given_o)
                ),
                n_inits=n_inits,
                n_optima=n_optima,
                **prep.study_fields(),
                verdict=prep.specs[S.VerdictSpec],
                align=prep.specs[S.AlignSpec],
            )
            outcome = run_grid(study, _Progress(progress))
    return (
        pl.DataFrame(outcome.paths, schema=polars_schema(PATH_SCHEMA), orient="row"),
        pl.DataFrame(outcome.curves, schema=polars_schema(CURVE_SCHEMA), orient="row"),
    )


def plane(
    a: Endpoint,
    b: Endpoint,
    c: Endpoint,
    *,
    resolution: int = S.PlaneSpec.resolution,
    range: Sequence[float] | str | None = None,
    out: str | Path | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    **kwargs: Any,
) -> tuple[Any, dict[str, Any]]:
    """The loss on a ``resolution`` x ``resolution`` grid over the plane through A (the
    origin), B and C (Figures 1, 9): ``mliscan plane``'s runner, its defaults (batch size
    1024) and its numbers. ``range``: (XMIN, XMAX, YMIN, YMAX) in plane coordinates (the
    points plus 20% by default). ``out``: the result folder; a second call with the same
    ``out`` resumes. Every other argument is :func:`compare`'s.

    Returns a polars frame (x, y, loss, accuracy; row-major) and ``plane.json``'s record
    (the points' coordinates ``coords``, their losses ``anchor_loss``, ``bounds``, ...).
    """
    import polars as pl

    from mliscan.runners import PLANE_DEFAULTS
    from mliscan.runners.plane import PlaneStudy, run_plane

    kwargs = _renamed(kwargs, "plane")
    _no_gauss(kwargs, "plane")
    with _in_python_words():
        prep = _prepared(kwargs, PLANE_DEFAULTS)
        given = {"resolution": resolution, "range": range}
        plane_spec = _options({**_COMPARE_DEFAULTS, **given}, (S.PlaneSpec,))[S.PlaneSpec]
        source = prep.specs[S.SourceSpec]
        with _store(out) as root:
            study = PlaneStudy(
                a=_study_endpoint(a, "A", source),
                b=_study_endpoint(b, "B", source),
                c=_study_endpoint(c, "C", source),
                out=root,
                **prep.study_fields(),
                plane=plane_spec,
                align=prep.specs[S.AlignSpec],
            )
            outcome = run_plane(study, _Progress(progress))
    return pl.DataFrame(
        outcome.rows, schema=polars_schema(PLANE_SCHEMA), orient="row"
    ), outcome.record


def _no_gauss(kwargs: dict[str, Any], study: str) -> None:
    for name in ("gauss", "gauss_examples", "gauss_method", "unrelated", "alphas"):
        if name in kwargs:
            raise UsageError(f"{study}: {name}= is not an argument of a {study} (see compare())")


def trajectory(
    source: str | Path,
    *,
    revisions: str | Sequence[str] | None = None,
    out: str | Path | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    **kwargs: Any,
) -> Any:
    """θ₀ → θ_k and θ_k → θ_T for every saved checkpoint θ_k of ``source`` (a run folder of
    ``mliscan train --save-every K``, a folder of checkpoints, a Trainer run folder, or
    ``hf:ORG/NAME`` with ``revisions``, e.g. ``"step*"`` or ``["step0", "step1000"]``):
    ``mliscan trajectory``'s runner, its defaults (batch size 1024) and its numbers.
    ``out``: the result store; a second call with the same ``out`` resumes. Every other
    argument is :func:`compare`'s.

    Returns a polars frame with one row per checkpoint (``trajectory.parquet``'s columns).
    """
    import polars as pl

    from mliscan.runners import TRAJECTORY_DEFAULTS
    from mliscan.runners.trajectory import TrajectoryStudy, run_trajectory

    if not isinstance(source, (str, Path)):
        raise UsageError(f"trajectory: source takes a folder or an hf: source, got {source!r}")
    if revisions is not None and not isinstance(revisions, str):
        if not all(isinstance(r, str) for r in revisions):
            raise UsageError("trajectory: revisions= takes names or patterns (text)")
        revisions = ",".join(revisions)
    kwargs = _renamed(kwargs, "trajectory")
    if kwargs.get("unrelated"):
        raise UsageError("trajectory: unrelated= is compare()'s (Figure 6)")
    for name in ("model", "data"):
        if name in kwargs and not isinstance(kwargs[name], (str, type(None))):
            raise UsageError(f"trajectory: {name}= takes a name here (the runs define the rest)")
    with _in_python_words():
        prep = _prepared(kwargs, TRAJECTORY_DEFAULTS)
        with _store(out) as root:
            study = TrajectoryStudy(
                str(source),
                root,
                revisions,
                **prep.study_fields(),
                verdict=prep.specs[S.VerdictSpec],
            )
            outcome = run_trajectory(study, _Progress(progress))
    return pl.DataFrame(outcome.rows, schema=polars_schema(TRAJECTORY_SCHEMA), orient="row")


def report(
    runs: str | Path | Sequence[str | Path],
    *,
    out: str | Path | None = None,
    loss_threshold: float | None = None,
    tol: float | None = None,
    group_by: str | Sequence[str] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    **kwargs: Any,
) -> tuple[Any, dict[str, Any]]:
    """The paper's tables over trained runs (Table 1 / Table 2 forms and the Gauss-length
    power law of Figure 7): ``mliscan report``'s runner and its numbers. ``runs``: folders of
    ``mliscan train`` runs (searched recursively); each run's metrics are cached in its
    folder, so a second call reads them. ``loss_threshold``/``tol``: which runs count as
    converged and as non-monotonic (per dataset by default, as the paper's tables);
    ``group_by``: columns of an extra table. ``out``: where runs.parquet and the tables'
    .md/.csv are written (temporary without it). The evaluation arguments are
    :func:`compare`'s (``alphas=``, ``gauss=``, ``bn_mode=``, ...).

    Returns a polars frame (one row per run: settings, min-Δ, monotonic, barrier, Gauss
    length, ...) and the tables by name (``"table1"``, ``"table2"``, ``"grouped"``,
    ``"powerlaw"``), each a list of rows.
    """
    import polars as pl

    from mliscan.runners.report import ReportStudy, run_report, runs_schema

    folders = [runs] if isinstance(runs, (str, Path)) else list(runs)
    if not folders or not all(isinstance(f, (str, Path)) for f in folders):
        raise UsageError("report: runs takes a folder or a list of folders of trained runs")
    if group_by is not None and not isinstance(group_by, str):
        group_by = ",".join(group_by)
    kwargs = _renamed(kwargs, "report")
    for name in ("model", "data", "loss", "output", "input_shape", "unrelated", "align"):
        if name in kwargs:
            raise UsageError(f"report: {name}= is not an argument of a report (the runs say)")
    with _in_python_words():
        prep = _prepared(kwargs, {})
        given = {"loss_threshold": loss_threshold, "tol": tol, "group_by": group_by}
        report_spec = S.build(S.ReportSpec, given, {k: f"{k}=" for k in given})
        with _store(out) as root:
            study = ReportStudy(
                tuple(Path(f) for f in folders),
                root,
                source=prep.specs[S.SourceSpec],
                eval=prep.specs[S.EvalSpec],
                report=report_spec,
            )
            outcome = run_report(study, _Progress(progress))
    schema = runs_schema(outcome.rows[0])
    frame = pl.DataFrame(
        [{k: r[k] for k in schema} for r in outcome.rows],
        schema=polars_schema(schema),
        orient="row",
    )
    return frame, {t.name: t.rows for t in outcome.tables}


@dataclass
class Tracker:
    """What ``mliscan.track`` records: theta_0 on entry, the result on exit."""

    module: nn.Module
    options: dict[str, Any]
    init: dict[str, torch.Tensor] = field(default_factory=dict)
    result: PathResult | None = None

    def measure(self) -> PathResult:
        """The path from the weights at entry to the module's current weights."""
        self.result = compare(self.init, self.module, model=self.module, **self.options)
        return self.result


@contextmanager
def track(module: nn.Module, data: Data, **options: Any) -> Iterator[Tracker]:
    """Record ``module``'s weights on entry and measure the path to its weights on exit.

    Example::

        with mliscan.track(net, (X, y), alphas=25) as t:
            for epoch in range(10):
                train_one_epoch(net)
        print(t.result.min_delta, t.result.monotonic)
    """
    options = _renamed(options, "track", stacklevel=4)  # through contextlib's __enter__
    _check_arguments(module, options.get("loss"), data, options.get("data_limit"))
    if module is None:
        raise UsageError("track: module= takes the torch nn.Module being trained, got None")
    if not isinstance(data, str) and data is not None:  # read now: a bad data= fails first
        ds = _dataset(data, options.get("data_limit"), class_targets=options.get("loss") is None)
        data = (ds.inputs, ds.targets) if ds is not None else data
    tracker = Tracker(module, {"data": data, **options})
    tracker.init = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    was_training = module.training
    yield tracker
    tracker.measure()
    module.train(was_training)


__all__ = [
    "CLI_ONLY",
    "PathResult",
    "Tracker",
    "compare",
    "grid",
    "plane",
    "report",
    "track",
    "trajectory",
]
