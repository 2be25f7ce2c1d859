"""Typed, validated descriptions of everything a user can set, and the paper's constants.

One declaration per concern (where the weights come from, the architecture, the data, the
evaluation and its batch-norm policy, the verdict thresholds). Each field carries its help
text, its command-line flag, its allowed values and whether it changes a number; from the
same fields come the command-line options (``mliscan.cli.spine``), the config-file keys
(``[tool.mliscan.<command>]``, ``mliscan.toml``), the validation (at construction, whatever
the caller: command line, config file or Python) and the identity of a result
(``numeric_settings``, hashed by ``mliscan.identity``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from mliscan.errors import UsageError

# Section 4 of the paper evaluates every interpolation on 50 evenly spaced alphas in [0, 1].
DEFAULT_ALPHAS = 50
# More alphas than this is a typing error, not a study (and would exhaust memory).
MAX_ALPHAS = 100_000
# Definition 1 (Section 3.1): a path is monotonic when min-Delta <= tolerance. Our default is
# the exact definition (0); the paper's MLP tables (Table 1) used Delta > 1e-3 (see report.py).
DEFAULT_TOLERANCE = 0.0
# Batch size of the train-mode pass that re-estimates batch-norm statistics at each alpha:
# None is the whole data as one batch (the training set's own activation statistics).
DEFAULT_BN_BATCH_SIZE: int | None = None
# The paper code's warm-up epoch runs in training batches; ours are of this size.
PAPER_BN_BATCH_SIZE = 256
# Batch size of the evaluation passes (no effect on results, only on speed and memory):
# None means "auto": the largest of a few candidates that fits (mliscan.resources: chosen
# from memory on the first use, never timed, so the same on a busy machine).
DEFAULT_EVAL_BATCH_SIZE: int | None = None
EVAL_BATCH_CANDIDATES = (64, 256, 1024, 4096)
# Momentum of the paper code's batch-norm warm-up epoch (torch's default).
PAPER_BN_MOMENTUM = 0.1

# Text data: tokens per example, and the share of the corpus a language-model curve reads by
# default (16384 tokens = 128 sequences of 128: a curve of a 100M model in minutes on a CPU).
DEFAULT_SEQ_LEN = 128
DEFAULT_MAX_TOKENS = 16384
# Share of tokens masked for a masked-LM loss (BERT's 15%), chosen once with this seed.
MLM_PROBABILITY = 0.15
MLM_SEED = 0

BNMode = Literal["exact", "paper", "interpolate"]
Split = Literal["train", "test"]

# Help panels of the generated command-line options.
SOURCE = "Sources"
ARCH = "Architecture"
DATA = "Data"
EVAL = "Evaluation"
GATE = "Verdict and CI gates"
OUT = "Output"

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class SpecError(UsageError):
    """A value a user set is of the wrong type, out of range or contradicts another.

    ``where`` names the option (``--alphas``), the config key and file, or the Python
    argument; the message is one line ending in what is allowed."""

    def __init__(self, where: str, problem: str, field: str | None = None) -> None:
        self.where = where
        self.problem = problem
        self.field = field
        """The spec field at fault (``build`` names it as its caller knows it)."""
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class Opt:
    """What a spec field declares besides its type and default."""

    help: str
    flag: str | None = None
    """The command-line spelling (default: the field name with dashes)."""
    short: str | None = None
    """A one-letter alias (e.g. -q)."""
    panel: str | None = None
    choices: tuple[Any, ...] | None = None
    ge: float | None = None
    le: float | None = None
    finite: bool = True
    """Floats must be finite."""
    numeric: bool = True
    """The value changes a computed number (it enters a result's identity)."""
    metavar: str | None = None
    cli: bool = True
    """Declared as a command-line option (nested specs and internal fields are not)."""
    parse: Any = None
    """A function str -> value for options whose command-line form is text (e.g. 'all')."""
    show: str | None = None
    """How the default is shown in help, when not the value itself."""
    negative: str | None = None
    """Boolean options: the flag that sets False (e.g. --no-gauss); None: a plain flag."""
    rare: bool = False
    """Rarely needed: left out of a command's ``--help``, shown by ``--help-all``."""
    code: bool = False
    """The value makes mliscan import or run code (a module to import, a pickle to trust):
    honoured from the command line, Python and the current project's settings file only,
    never from a settings file above the project (``cli.settings.load_settings``)."""


def opt(default: Any = dataclasses.MISSING, help: str = "", **kw: Any) -> Any:
    """A spec field: its default, help text and constraints in one place."""
    meta = {"mliscan": Opt(help=help, **kw)}
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable default: use a tuple")
    return field(default=default, metadata=meta)


def option_of(f: dataclasses.Field) -> Opt | None:
    return f.metadata.get("mliscan")


def flag_of(f: dataclasses.Field) -> str:
    o = option_of(f)
    return (o.flag if o and o.flag else None) or "--" + f.name.replace("_", "-")


def argument_name(f: dataclasses.Field) -> str:
    """The name of a field's option as a Python argument and a config key (its flag without
    the dashes: ``--bn-mode`` is ``bn_mode``, ``--data`` is ``data``)."""
    return flag_of(f)[2:].replace("-", "_")


class Spec:
    """Base of the frozen specs: validation at construction, numeric identity."""

    # the name of the concern, used in config-file messages
    concern: ClassVar[str] = "settings"

    if typing.TYPE_CHECKING:
        # Every concrete spec is a frozen dataclass: say so to the type checker (the protocol
        # of ``dataclasses.fields`` and ``replace``) without a runtime class attribute.
        __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            o = option_of(f)
            value = getattr(self, f.name)
            where = flag_of(f)
            try:
                coerced = _check_type(value, hints[f.name], where)
                if coerced is not value:
                    object.__setattr__(self, f.name, coerced)
                    value = coerced
                if o is not None:
                    _check_constraints(value, o, where)
            except SpecError as exc:
                exc.field = exc.field or f.name
                raise
        self.check()

    @classmethod
    def cli_fields(cls) -> tuple[dataclasses.Field, ...]:
        """The fields in the order a command lists their options (the declaration order)."""
        return dataclasses.fields(cls)

    def check(self) -> None:
        """Rules that relate several fields (override)."""

    def fail(self, name: str, problem: str) -> SpecError:
        f = next(f for f in dataclasses.fields(self) if f.name == name)
        return SpecError(flag_of(f), problem, field=name)

    def numeric_settings(self) -> dict[str, Any]:
        """The fields that change a computed number, as JSON-able values (for identities)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            o = option_of(f)
            value = getattr(self, f.name)
            if isinstance(value, Spec):
                out[f.name] = value.numeric_settings()
            elif o is None or o.numeric:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def replace(self, **changes: Any) -> Any:
        return dataclasses.replace(self, **changes)


def build(cls: type[Any], values: dict[str, Any], where: dict[str, str] | None = None) -> Any:
    """Construct ``cls`` from ``values``, naming ``where[field]`` in any error (a config
    file's key, a Python argument) instead of the field's flag. The location travels with
    the error: no state outside the call."""
    try:
        return cls(**values)
    except SpecError as exc:
        if where and exc.field in where:
            raise SpecError(where[exc.field], exc.problem, exc.field) from None
        raise


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "none"
    if origin is tuple:
        return "a list"
    return {bool: "true/false", int: "a whole number", float: "a number", str: "text"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """``value`` if it is of type ``tp`` (ints are accepted as floats), else a SpecError."""
    ok, coerced = _matches(value, tp)
    if not ok:
        raise SpecError(where, f"expected {_describe(tp)}, got {value!r}")
    return coerced


def _matches(value: Any, tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, coerced = _matches(value, arg)
            if ok:
                return True, coerced
        return False, value
    if origin is Literal:
        return value in typing.get_args(tp) and not isinstance(value, bool), value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, value
        return True, float(value)
    if tp is str:
        return isinstance(value, str), value
    if origin is tuple:
        (item, *_rest) = typing.get_args(tp)
        if isinstance(value, list):
            value = tuple(value)
        if not isinstance(value, tuple):
            return False, value
        out = []
        for v in value:
            ok, c = _matches(v, item)
            if not ok:
                return False, value
            out.append(c)
        return True, tuple(out)
    if isinstance(tp, type):
        return isinstance(value, tp), value
    return True, value


def _check_constraints(value: Any, o: Opt, where: str) -> None:
    if value is None or isinstance(value, (bool, Spec)):
        return
    if o.choices is not None and value not in o.choices:
        raise SpecError(where, f"must be one of {', '.join(map(str, o.choices))}, got {value!r}")
    if isinstance(value, float) and o.finite and not math.isfinite(value):
        raise SpecError(where, f"must be a finite number, got {value!r}")
    if isinstance(value, (int, float)):
        if o.ge is not None and not value >= o.ge:
            raise SpecError(where, f"must be at least {_num(o.ge)}, got {value!r}")
        if o.le is not None and not value <= o.le:
            raise SpecError(where, f"must be at most {_num(o.le)}, got {value!r}")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


# ---- the concerns --------------------------------------------------------------------------


def parse_bn_batch_size(text: str) -> int | None:
    """'all' (the whole data as one batch) or a whole number."""
    if text.strip().lower() == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise SpecError("--bn-batch-size", f"takes a whole number or 'all', got {text!r}") from None


@dataclass(frozen=True)
class SourceSpec(Spec):
    """How endpoints are opened."""

    concern: ClassVar[str] = "source"
    trust_pickle: bool = opt(
        False,
        "Allow torch pickles with arbitrary globals (runs their code!).",
        panel=SOURCE,
        rare=True,
        numeric=False,
        code=True,
    )
    offline: bool = opt(
        False,
        "Hub sources from the local cache only (as HF_HUB_OFFLINE=1).",
        panel=SOURCE,
        rare=True,
        numeric=False,
    )
    ema: bool = opt(
        False,
        "Read the EMA weights of training checkpoints (timm train.py's state_dict_ema).",
        panel=SOURCE,
        rare=True,
    )


# The metadata key of an ArchSpec field made from an adapter's flag: the option it sets.
ADAPTER_KEY = "mliscan_adapter_key"


@dataclass(frozen=True)
class AdapterFlag:
    """A command-line option an adapter declares for one of its options (``--hidden`` sets
    the mlp adapter's ``hidden``; ``Adapter.flags``). The name is the flag (``--init-scheme``
    for ``init_scheme``), the config key and the Python name; the value goes to the option
    ``key`` of whichever adapter is chosen (one without that option refuses it by name)."""

    name: str
    help: str
    key: str | None = None
    """The adapter option it sets (default: ``name``)."""
    choices: tuple[str, ...] | None = None
    boolean: bool = False
    """A flag without a value (True when given)."""
    negative: str | None = None
    """Boolean flags: the flag that sets False (e.g. --no-bn)."""
    rare: bool = False
    """Left out of ``--help`` (shown by ``--help-all``)."""
    show: str = "from metadata"
    """How the unset default reads in help (the adapter then reads the value elsewhere)."""

    def as_field(self) -> tuple[str, Any, Any]:
        """The ArchSpec field of this flag: (name, type, dataclasses.Field)."""
        o = Opt(
            help=self.help,
            panel=ARCH,
            choices=self.choices,
            negative=self.negative,
            rare=self.rare,
            show=self.show,
        )
        meta = {"mliscan": o, ADAPTER_KEY: self.key or self.name}
        tp = bool | None if self.boolean else str | None
        return self.name, tp, field(default=None, metadata=meta)


@dataclass(frozen=True)
class ArchSpec(Spec):
    """The architecture: an adapter name and the options given (the rest from metadata).

    The adapters' own flags (``--hidden``, ``--bn``, ...) are fields of
    :meth:`with_flags`'s subclass, which the command line builds from the flags the
    adapters declare (``registry.arch_spec``)."""

    concern: ClassVar[str] = "architecture"
    arch: str | None = opt(
        None,
        "Architecture adapter (see `mliscan adapters`).",
        panel=ARCH,
        show="from metadata",
    )
    arch_opt: tuple[str, ...] = opt(
        (),
        "Any adapter option as KEY=VALUE (repeatable).",
        panel=ARCH,
        rare=True,
        metavar="KEY=VALUE",
    )
    model: str | None = opt(
        None,
        "Your own model instead of an adapter: factory(**--model-arg), an nn.Module whose "
        "output is the logits (module.path imported as python -m would, from here).",
        panel=ARCH,
        metavar="MODULE:FACTORY",
        code=True,
    )
    model_arg: tuple[str, ...] = opt(
        (),
        "A keyword argument of the --model factory as KEY=VALUE (a Python literal or text; "
        "repeatable).",
        panel=ARCH,
        rare=True,
        metavar="KEY=VALUE",
        code=True,
    )

    @classmethod
    def with_flags(cls, flags: tuple[AdapterFlag, ...]) -> type[ArchSpec]:
        """This spec with one field per adapter flag (validated, shown and read from config
        files like every field). A flag declared by several adapters is declared alike."""
        declared: dict[str, AdapterFlag] = {}
        for flag in flags:
            if flag.name in declared and declared[flag.name] != flag:
                raise ValueError(f"adapter flag --{flag.name} is declared twice, differently")
            declared[flag.name] = flag
        clash = set(declared) & {f.name for f in dataclasses.fields(cls)}
        if clash:
            raise ValueError(f"adapter flags {sorted(clash)} clash with ArchSpec's own fields")
        fields = [flag.as_field() for flag in declared.values()]
        return dataclasses.make_dataclass(
            cls.__name__,
            fields,
            bases=(cls,),
            frozen=True,
            namespace={"__module__": cls.__module__, "__doc__": cls.__doc__},
        )

    @classmethod
    def cli_fields(cls) -> tuple[dataclasses.Field, ...]:
        """--arch, then the adapters' flags (the options they set), then the rest."""
        fields = dataclasses.fields(cls)
        flags = tuple(f for f in fields if ADAPTER_KEY in f.metadata)
        first = tuple(f for f in fields if f.name == "arch")
        return first + flags + tuple(f for f in fields if f not in first + flags)

    def check(self) -> None:
        for name in ("arch_opt", "model_arg"):
            for item in getattr(self, name):
                key, sep, _ = item.partition("=")
                if not sep or not key.strip():
                    raise self.fail(name, f"expects KEY=VALUE, got {item!r}")
        if self.model is not None:
            module, sep, factory = self.model.partition(":")
            if not sep or not module or not factory:
                raise self.fail("model", f"expects module.path:factory, got {self.model!r}")
            if self.arch is not None:
                raise self.fail("model", "takes the place of --arch: give one of them")
        elif self.model_arg:
            raise self.fail("model_arg", "needs --model module.path:factory")

    def given_options(self) -> dict[str, Any]:
        """The architecture options the user actually gave (nothing for those left unset):
        each adapter flag's value under the option it sets, then ``--arch-opt``'s."""
        given: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            key = f.metadata.get(ADAPTER_KEY)
            if key is not None and getattr(self, f.name) is not None:
                given[key] = getattr(self, f.name)
        for item in self.arch_opt:
            key, _, value = item.partition("=")
            given[key.strip()] = value.strip()
        return given


@dataclass(frozen=True)
class DataSpec(Spec):
    """Which examples the loss is measured on."""

    concern: ClassVar[str] = "data"
    name: str | None = opt(
        "digits",
        "digits, tinytext (both bundled), mnist, fashion-mnist, cifar10, cifar100, wikitext2, "
        "imagefolder (timm), text (hf-*).",
        flag="--data",
        panel=DATA,
        show="the checkpoint's, else the adapter's",
    )
    data_dir: str | None = opt(
        None,
        "Folder in torchvision's on-disk layout (never downloaded).",
        panel=DATA,
        metavar="DIR",
    )
    split: Split = opt("train", "Which split (the paper reports training loss).", panel=DATA)
    limit: int | None = opt(
        None,
        "Use only the first N examples.",
        flag="--data-limit",
        panel=DATA,
        ge=1,
        metavar="N",
        show="all",
    )
    data_file: str | None = opt(
        None,
        "--data text: a .txt corpus, or .jsonl/.csv with 'text' (and 'label').",
        panel=DATA,
        rare=True,
        metavar="FILE",
    )
    seq_len: int | None = opt(
        None,
        "Tokens per sequence: 35 for wikitext2/tinytext; 128 for text, or the model's "
        "context if shorter.",
        panel=DATA,
        rare=True,
        ge=1,
        metavar="N",
        show="per dataset",
    )
    max_tokens: int | None = opt(
        DEFAULT_MAX_TOKENS,
        "--data text (language models): use the first N tokens of the corpus.",
        panel=DATA,
        rare=True,
        ge=1,
        metavar="N",
    )


@dataclass(frozen=True)
class BNSpec(Spec):
    """How batch-norm running statistics are obtained at each alpha."""

    concern: ClassVar[str] = "batch norm"
    mode: BNMode = opt(
        "exact",
        "exact: each BN layer's mean and population variance over all examples; paper: one "
        "train-mode epoch (momentum 0.1, batches of 256) as the paper's code; interpolate: "
        "the stored statistics, interpolated.",
        flag="--bn-mode",
        panel=EVAL,
    )
    batch_size: int | None = opt(
        DEFAULT_BN_BATCH_SIZE,
        "Batch size of the per-alpha BN re-estimation pass: 'all' (the whole data as one "
        "batch: the training set's own statistics) or N >= 2 (batches of N, pooled).",
        flag="--bn-batch-size",
        panel=EVAL,
        rare=True,
        ge=2,
        parse=parse_bn_batch_size,
        metavar="all|N",
        show="all",
    )
    max_batches: int | None = opt(
        None,
        "Cap the BN re-estimation pass at its first K batches (needs --bn-batch-size N).",
        flag="--bn-warmup-batches",
        panel=EVAL,
        rare=True,
        ge=1,
        metavar="K",
        show="all",
    )

    variance: Literal["population", "unbiased"] = opt(
        "population",
        "The variance stored by the exact mode: population (self-consistent; mliscan's "
        "default) or unbiased (N/(N-1) times it: torch's momentum=None pass, "
        "swa_utils.update_bn, REPAIR and the paper's code store this).",
        flag="--bn-variance",
        panel=EVAL,
        rare=True,
    )

    def __post_init__(self) -> None:
        if self.mode == "paper" and self.batch_size is None:
            object.__setattr__(self, "batch_size", PAPER_BN_BATCH_SIZE)
        super().__post_init__()

    def check(self) -> None:
        if self.variance == "unbiased" and self.mode != "exact":
            raise self.fail(
                "variance",
                f"applies to --bn-mode exact (paper keeps torch's own convention, interpolate "
                f"stores nothing), got --bn-mode {self.mode}",
            )
        if self.max_batches is not None and self.batch_size is None and self.mode == "exact":
            raise self.fail(
                "max_batches",
                "takes the first K batches of --bn-batch-size N; give --bn-batch-size too "
                "(the default 'all' is a single batch)",
            )

    def describe(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "batch_size": "all" if self.batch_size is None else self.batch_size,
            "max_batches": self.max_batches,
            # what the stored running_var holds: the exact mode's choice; torch's running
            # average of unbiased batch variances (paper); the endpoints' own (interpolate)
            "variance": {"exact": self.variance, "paper": "unbiased (running average)"}.get(
                self.mode, "interpolated"
            ),
        }


@dataclass(frozen=True)
class EvalSpec(Spec):
    """Settings of one interpolation evaluation."""

    concern: ClassVar[str] = "evaluation"
    alphas: int = opt(
        DEFAULT_ALPHAS,
        "Points of linspace(0, 1, N) (the paper: 50).",
        panel=EVAL,
        ge=2,
        le=MAX_ALPHAS,
        metavar="N",
    )
    bn: BNSpec = field(default_factory=BNSpec)
    gauss: bool = opt(
        True,
        "Compute the average Gauss length of the logit curve (Definition 2).",
        panel=EVAL,
        negative="--no-gauss",
    )
    gauss_examples: int | None = opt(
        None,
        "Average the Gauss length over the first N examples only.",
        panel=EVAL,
        rare=True,
        ge=1,
        metavar="N",
        show="all",
    )
    gauss_method: Literal["auto", "jvp"] = opt(
        "auto",
        "auto: one second-order forward pass where every layer has a rule, nested jvp "
        "otherwise; jvp: always nested jvp (the reference).",
        panel=EVAL,
        rare=True,
        numeric=False,
    )
    batch_size: int | None = opt(
        DEFAULT_EVAL_BATCH_SIZE,
        "Evaluation batch size (speed and memory only).",
        panel=EVAL,
        rare=True,
        ge=1,
        metavar="N",
        show="auto",
    )
    alpha_chunk: int = opt(
        1,
        "Alphas per vmapped pass (GPU, small models; with BN only for --bn-batch-size all; "
        "1: off).",
        panel=EVAL,
        rare=True,
        ge=1,
        le=MAX_ALPHAS,
        numeric=False,
        metavar="K",
    )
    dtype: Literal["float32", "float64", "bfloat16", "float16"] = opt(
        "float32",
        "Working dtype of the module (θ(α) itself is computed in float32 or wider).",
        panel=EVAL,
        rare=True,
    )
    device: str = opt(
        "auto",
        "auto, cpu, cuda, cuda:N or mps.",
        panel=EVAL,
        numeric=False,
    )
    amp: Literal["off", "bf16", "fp16"] = opt(
        "off",
        "Autocast the BN and loss passes to bfloat16/float16 (the Gauss pass keeps --dtype).",
        panel=EVAL,
        rare=True,
    )
    compile: bool = opt(
        False,
        "torch.compile the evaluation passes (speed only; the first alpha compiles).",
        panel=EVAL,
        rare=True,
        numeric=False,
    )

    def check(self) -> None:
        if not _DEVICE.match(self.device):
            raise self.fail(
                "device", f"must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}"
            )


@dataclass(frozen=True)
class VerdictSpec(Spec):
    """When a path counts as monotonic (Definition 1): min-Delta <= tol."""

    concern: ClassVar[str] = "verdict"
    tol: float = opt(
        DEFAULT_TOLERANCE,
        "Monotonic when min-Δ <= TOL (the paper's MLP tables used 1e-3).",
        panel=GATE,
        ge=0,
        numeric=False,
        metavar="TOL",
    )


@dataclass(frozen=True)
class GateSpec(Spec):
    """CI thresholds on a path's metrics (exit 1 when one fails)."""

    concern: ClassVar[str] = "gate"
    require_monotonic: bool = opt(
        False,
        "Exit 1 when the path is not monotonic (min-Δ > --tol).",
        panel=GATE,
        numeric=False,
    )
    max_delta: float | None = opt(
        None, "Exit 1 when min-Δ exceeds X.", panel=GATE, ge=0, numeric=False, metavar="X"
    )
    max_gauss_length: float | None = opt(
        None,
        "Exit 1 when the average Gauss length exceeds X.",
        panel=GATE,
        rare=True,
        ge=0,
        numeric=False,
        metavar="X",
    )
    max_barrier: float | None = opt(
        None, "Exit 1 when the loss barrier exceeds X.", panel=GATE, numeric=False, metavar="X"
    )
    min_final_accuracy: float | None = opt(
        None,
        "Exit 1 when the final training accuracy is below X.",
        panel=GATE,
        rare=True,
        ge=0,
        le=1,
        numeric=False,
        metavar="X",
    )

    def any_threshold(self) -> bool:
        return self.require_monotonic or any(
            v is not None
            for v in (
                self.max_delta,
                self.max_gauss_length,
                self.max_barrier,
                self.min_final_accuracy,
            )
        )


def spec_hash(obj: Any, length: int = 12) -> str:
    """A stable short hash of a dataclass's *non-default* fields.

    Adding a field with a default never changes the hash of older specs.
    """
    return hashlib.sha256(
        json.dumps(non_default_fields(obj), sort_keys=True, default=str).encode()
    ).hexdigest()[:length]


def non_default_fields(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            nested = non_default_fields(value)
            if nested:
                out[f.name] = nested
        elif value != default:
            out[f.name] = value
    return out


def _parse_range(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise SpecError("--range", f"expects XMIN,XMAX,YMIN,YMAX, got {text!r}") from None


@dataclass(frozen=True)
class PlaneSpec(Spec):
    """The grid over the plane through three points (Figures 1, 9)."""

    concern: ClassVar[str] = "plane"
    resolution: int = opt(21, "Grid points per axis.", panel=EVAL, ge=2, le=1001, metavar="N")
    range: tuple[float, ...] | None = opt(
        None,
        "XMIN,XMAX,YMIN,YMAX in plane coordinates.",
        panel=EVAL,
        parse=_parse_range,
        metavar="XMIN,XMAX,YMIN,YMAX",
        show="the points plus 20%",
    )

    def check(self) -> None:
        r = self.range
        if r is None:
            return
        if len(r) != 4 or not all(math.isfinite(v) for v in r) or not (r[0] < r[1] and r[2] < r[3]):
            raise self.fail(
                "range", f"expects finite XMIN,XMAX,YMIN,YMAX with min < max, got {list(r)}"
            )


@dataclass(frozen=True)
class ReportSpec(Spec):
    """Which runs count, and the verdict, in the paper's tables (Section 4.1)."""

    concern: ClassVar[str] = "report"
    loss_threshold: float | None = opt(
        None,
        "Count runs whose final training loss is below X.",
        panel=GATE,
        ge=0,
        numeric=False,
        metavar="X",
        show="per dataset: 0.1 MNIST-like, 1.0 CIFAR-10, 2.0 CIFAR-100, 30 autoencoders",
    )
    tol: float | None = opt(
        None,
        "Non-monotonic when min-Δ > TOL.",
        panel=GATE,
        ge=0,
        numeric=False,
        metavar="TOL",
        show="1e-3 as in Table 1; 0 for CIFAR",
    )
    group_by: str | None = opt(
        None,
        "Extra table grouped by these columns, e.g. optimizer,bn.",
        panel=OUT,
        numeric=False,
        metavar="COLUMNS",
    )


@dataclass(frozen=True)
class AlignSpec(Spec):
    """Permutation alignment of the second endpoint to the first before interpolating."""

    concern: ClassVar[str] = "alignment"
    align: Literal["none", "weight-matching"] = opt(
        "none",
        "Permute FINAL's hidden units to best match INIT first (weight matching, Ainsworth "
        "et al. 2023); the JSON keeps the unaligned path's distance, barrier and min-Δ too.",
        panel=EVAL,
    )
