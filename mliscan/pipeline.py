"""From two checkpoint paths to a finished pair result (the library form of ``compare``).

Checkpoint files -> architecture (``--arch`` or the files' mliscan metadata) -> module ->
data -> :class:`~mliscan.evaluate.PathEvaluator` -> metrics -> :class:`~mliscan.results.PathResult`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mliscan import metrics
from mliscan.adapter import (
    Adapter,
    DataInfo,
    check_fits,
    fresh_init,
    load_into,
    probe_forward,
)
from mliscan.bnpolicy import paper_note
from mliscan.checkpoints import Checkpoint, check_finite, check_pair, load_checkpoint
from mliscan.custom import FactoryAdapter, parse_model_args
from mliscan.data import Dataset, load_dataset
from mliscan.errors import CheckpointFormatError, DataError, UsageError
from mliscan.evaluate import (
    PathEvaluator,
    PreparedData,
    ProgressFn,
    alpha_grid,
    prepare_data,
    resolve_device,
)
from mliscan.fresh import materialize
from mliscan.interpolate import TensorRoles
from mliscan.record import Note
from mliscan.registry import adapter_for_config, get_adapter, names
from mliscan.results import PathResult
from mliscan.sources import Resolved, resolve
from mliscan.spec import DEFAULT_TOLERANCE, AlignSpec, ArchSpec, DataSpec, EvalSpec, SourceSpec

# Datasets whose preprocessing the model defines (tokenizer, image transform).
MODEL_DEFINED_DATA = ("text", "imagefolder")
DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass
class ModelChoice:
    """The architecture, its parsed options and where they came from."""

    adapter: Adapter
    options: Any
    source: str
    """'cli', 'metadata' or 'config'."""


def open_source(
    text: str, trust_pickle: bool = False, offline: bool = False, ema: bool = False
) -> Checkpoint:
    """Resolve a source (path, hf:, timm:, init:) and load its weights (``ema``: the EMA
    weights of a training checkpoint)."""
    resolved = materialize(resolve(str(text), offline=offline))
    ckpt = load_checkpoint(resolved.path, trust_pickle, ema)
    ckpt.source = resolved
    return ckpt


def open_endpoint(text: str, source: SourceSpec | None = None) -> Checkpoint:
    """The one way every study opens an endpoint: resolve (paths, ``hf:``, ``timm:``,
    ``init:``), materialise, load under the pickle policy (``--trust-pickle``, ``--ema``),
    refuse non-finite weights; the resolution (repository, revision, commit) is kept in
    ``.source``. Key mapping needs the model: :meth:`Session.state`."""
    source = source or SourceSpec()
    ckpt = open_source(str(text), source.trust_pickle, source.offline, source.ema)
    check_finite(ckpt)
    return ckpt


def choose_model(
    init: Checkpoint, arch: str | None, given_options: Mapping[str, Any]
) -> ModelChoice:
    """``--arch`` and options given win; otherwise the file's mliscan metadata, or the
    adapter that claims the folder's ``config.json``; options not given are then read off
    the config and the checkpoint's shapes where the adapter can."""
    meta = init.metadata
    source = "cli"
    if arch is None:
        arch = meta.get("arch")
        source = "metadata"
        if arch is None and init.config is not None:
            arch = adapter_for_config(init.config, str(init.folder / "config.json")).name
            source = "config"
        if arch is None:
            raise UsageError(
                f"{init.path} carries no mliscan metadata naming its architecture; pass "
                f"--arch (one of {', '.join(names())})"
            )
    adapter = get_adapter(arch)
    opts: dict[str, Any] = {}
    if source == "metadata" or meta.get("arch") == arch:
        opts.update(meta.get("arch_options", {}))
    elif init.config is not None:
        try:
            opts.update(adapter.options_from_config(init.config))
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            raise CheckpointFormatError(
                f"{init.folder / 'config.json'}: a field has the wrong type "
                f"({type(exc).__name__}: {exc}); fix the file or pass --arch and its options"
            ) from exc
    inferred = adapter.infer_options(adapter.map_keys(init.tensors))
    for k, v in inferred.items():
        if k not in given_options and k not in opts:
            opts[k] = v
    opts.update(given_options)
    return ModelChoice(adapter, adapter.parse_options(opts), source)


def resolve_data(
    init: Checkpoint, adapter: Adapter, given: DataSpec | Mapping[str, Any]
) -> DataSpec:
    """Given fields win; then the data the file was trained on (its metadata: name and
    subset); then the adapter's default dataset. The split defaults to train."""
    if isinstance(given, DataSpec):
        given = {
            "name": given.name,
            "data_dir": given.data_dir,
            "split": given.split,
            "limit": given.limit,
            "data_file": given.data_file,
            "seq_len": given.seq_len,
            "max_tokens": given.max_tokens,
        }
    meta = init.metadata.get("data") or {}
    name = given.get("name") or meta.get("name") or adapter.default_data
    limit = given.get("limit")
    if limit is None and meta.get("name") == name:
        limit = meta.get("limit")
    text = {k: given[k] for k in ("seq_len", "max_tokens") if given.get(k) is not None}
    if "seq_len" not in text and meta.get("name") == name and meta.get("seq_len"):
        text["seq_len"] = meta["seq_len"]
    return DataSpec(
        name=name,
        data_dir=given.get("data_dir"),
        split=given.get("split") or "train",
        limit=limit,
        data_file=given.get("data_file"),
        **text,
    )


def build_module(
    choice: ModelChoice, dataset: Dataset, ckpt: Checkpoint
) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    info = DataInfo(dataset.input_shape, dataset.num_classes)
    try:
        module = choice.adapter.build(choice.options, info)
    except (ValueError, RuntimeError) as exc:
        raise DataError(
            f"--arch {choice.adapter.name} cannot be built for this data: {exc}"
        ) from exc
    tensors = choice.adapter.map_keys(ckpt.tensors, choice.options)
    load_into(module, tensors, str(ckpt.path), choice.adapter.name)
    return module, tensors


@dataclass
class Session:
    """Everything shared by the paths of one study: architecture, module, data, device, and
    how its endpoints are opened (``open``) and mapped to the module's names (``state``),
    so that every study reads every endpoint the same way."""

    choice: ModelChoice
    dataset: Dataset
    data_spec: DataSpec
    module: torch.nn.Module
    prepared: PreparedData
    device: torch.device
    source: SourceSpec = field(default_factory=SourceSpec)

    @property
    def info(self) -> DataInfo:
        return DataInfo(self.dataset.input_shape, self.dataset.num_classes)

    def open(self, text: str) -> Checkpoint:
        """An endpoint of this study (:func:`open_endpoint` with the study's source spec)."""
        return open_endpoint(text, self.source)

    def state(self, ckpt: Checkpoint) -> dict[str, torch.Tensor]:
        """A checkpoint's tensors under the module's names: the adapter's key mapping with
        its options (a transformers GPT-NeoX head ``embed_out``, a wrapper's prefix),
        checked against the module (every key, every shape) with one error naming the
        file."""
        adapter = self.choice.adapter
        tensors = adapter.map_keys(ckpt.tensors, self.choice.options)
        check_fits(self.module, tensors, str(ckpt.path), adapter.name)
        return dict(tensors)

    def data_record(self) -> dict[str, Any]:
        out = {
            "name": self.dataset.name,
            "split": self.dataset.split,
            "examples": len(self.dataset),
            "limit": self.data_spec.limit,
            "data_dir": self.data_spec.data_dir,
        }
        if self.data_spec.data_file is not None:
            out["data_file"] = self.data_spec.data_file
            out["seq_len"] = int(self.dataset.inputs.shape[-1])
            out["max_tokens"] = self.data_spec.max_tokens
        return out


def setup(
    first: Checkpoint,
    arch: ArchSpec | Adapter | str | None,
    arch_options: Mapping[str, Any] | None,
    data: DataSpec | Dataset | Mapping[str, Any] | None,
    spec: EvalSpec,
    source: SourceSpec | None = None,
) -> Session:
    """Architecture (flag or metadata), data (flags, metadata, adapter default), module, device.

    ``arch`` is an :class:`ArchSpec` (its options given), or an adapter name with
    ``arch_options``; ``data`` a :class:`DataSpec` whose unset fields (None) are filled
    from the checkpoint's metadata and the adapter."""
    if isinstance(arch, ArchSpec) and arch.model is not None:
        custom = FactoryAdapter(arch.model, parse_model_args(arch.model_arg))
        choice = ModelChoice(custom, custom.parse_options({}), "cli")
    elif isinstance(arch, Adapter):  # the Python API's own module
        choice = ModelChoice(arch, arch.parse_options(arch_options or {}), "python")
    else:
        if isinstance(arch, ArchSpec):
            arch_spec = arch
            arch, arch_options = arch_spec.arch, arch_spec.given_options()
        choice = choose_model(first, arch, arch_options or {})
    if isinstance(data, Dataset):  # tensors given from Python
        dataset, data_spec = data, DataSpec(name=data.name, split=data.split)
    else:
        data_spec = resolve_data(first, choice.adapter, data or {})
        hooks = None
        if data_spec.name in MODEL_DEFINED_DATA:
            hooks = choice.adapter.data_hooks(choice.options, first.folder)
        dataset = load_dataset(data_spec, hooks)
    module, _ = build_module(choice, dataset, first)
    device = resolve_device(spec.device)
    dtype = DTYPES[spec.dtype]
    module = module.to(device=device, dtype=dtype)
    prepared = prepare_data(
        choice.adapter, dataset.inputs, dataset.targets, device, dtype, streamed=dataset.streamed
    )
    probe_forward(choice.adapter, module, prepared.inputs, dataset.name)
    return Session(choice, dataset, data_spec, module, prepared, device, source or SourceSpec())


Setup = Session  # the earlier name


def compare_pair(
    init_path: str,
    final_path: str,
    *,
    arch: ArchSpec | Adapter | str | None = None,
    arch_options: Mapping[str, Any] | None = None,
    data: DataSpec | Mapping[str, Any] | None = None,
    spec: EvalSpec | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    progress: ProgressFn | None = None,
    unrelated_seeds: Sequence[int] = (),
    source: SourceSpec | None = None,
    align_spec: AlignSpec | None = None,
    on_note: Callable[[Note], None] | None = None,
) -> PathResult:
    """Evaluate the straight path from ``init_path`` to ``final_path`` (paths or sources:
    ``hf:ORG/NAME@REV``, ``timm:NAME``, ``init:SOURCE``). ``on_note`` hears the notes known
    before the evaluation (endpoints that look swapped, or are one file) as soon as they are.

    Memory: theta_0 and theta_T are held once each, as loaded (stored dtype), plus the
    module's working weights; the loaded dicts are not kept beside them.
    """
    source = source or SourceSpec()
    align = align_spec.align if align_spec is not None else "none"
    t_start = time.perf_counter()
    init, final = open_endpoint(init_path, source), open_endpoint(final_path, source)
    return compare_checkpoints(
        init,
        final,
        arch=arch,
        arch_options=arch_options,
        data=data,
        spec=spec,
        tolerance=tolerance,
        progress=progress,
        unrelated_seeds=unrelated_seeds,
        t_start=t_start,
        align=align,
        on_note=on_note,
    )


def compare_checkpoints(
    init: Checkpoint,
    final: Checkpoint,
    *,
    arch: ArchSpec | Adapter | str | None = None,
    arch_options: Mapping[str, Any] | None = None,
    data: DataSpec | Dataset | Mapping[str, Any] | None = None,
    spec: EvalSpec | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    progress: ProgressFn | None = None,
    unrelated_seeds: Sequence[int] = (),
    t_start: float | None = None,
    align: str = "none",
    on_note: Callable[[Note], None] | None = None,
) -> PathResult:
    """The straight path between two loaded checkpoints (files, or state dicts from Python
    wrapped as :class:`Checkpoint`); ``compare_pair`` and ``mliscan.compare`` both end here.
    ``on_note`` as in :func:`compare_pair` (the result's ``notes`` hold every note)."""
    spec = spec or EvalSpec()
    t_start = time.perf_counter() if t_start is None else t_start
    check_pair(init, final)
    check_finite(init)
    check_finite(final)
    notes = [Note("endpoint", f"init: {n}") for n in init.notes]
    notes += [Note("endpoint", f"final: {n}") for n in final.notes]
    notes += integrity_notes(init, final)
    if on_note is not None:  # before the evaluation: a swapped pair is said before minutes
        for note in notes:
            on_note(note)
    sources = {"init": _source_record(init), "final": _source_record(final)}
    ctx = setup(init, arch, arch_options, data, spec)
    choice = ctx.choice
    theta0, theta1 = ctx.state(init), ctx.state(final)
    init_path_s, final_path_s = str(init.path), str(final.path)
    roles = TensorRoles.of(ctx.module, interpolate_bn_stats=spec.bn.mode == "interpolate")
    alignment = None
    if align != "none":
        alignment = _aligned(choice.adapter, ctx, theta0, theta1, roles, spec)
        theta1 = alignment.pop("state")
        unrelated_seeds = ()  # the unrelated-init study is of the unaligned optimum
    distance, normalized = metrics.weight_distance(theta0, theta1, roles.parameters)
    identical = all(torch.equal(theta0[k], theta1[k]) for k in roles.interpolated)
    # Large models: theta_T is re-read from disk at alpha = 1 instead of being kept (its
    # memory then holds theta_T - theta_0); not when unrelated paths also need theta_T.
    reader = None if unrelated_seeds else _module_reader(final, theta1)
    del init, final  # the evaluator holds the tensors themselves; no second reference
    evaluator = PathEvaluator(
        choice.adapter, ctx.module, theta0, theta1, ctx.prepared, spec, theta1_reader=reader
    )
    if reader is not None:
        del theta1  # consumed: may now hold theta_T - theta_0
    t_loaded = time.perf_counter()
    curve = evaluator.run(alpha_grid(spec.alphas), progress=progress)
    unrelated = []
    for seed in unrelated_seeds:  # Figure 6: unrelated initialisations -> the same optimum
        start = fresh_init(choice.adapter, choice.options, ctx.info, seed)
        start = {k: v.to(theta0[k].dtype) for k, v in start.items()}
        ev = PathEvaluator(choice.adapter, ctx.module, start, theta1, ctx.prepared, spec)
        unrelated.append(ev.run(alpha_grid(spec.alphas), gauss=False))
    notes += curve.notes
    timing = {"load": t_loaded - t_start, **curve.timing}
    timing["total"] = time.perf_counter() - t_start
    if identical:
        notes.append(
            Note("identical", "init and final weights are identical: the path is a single point")
        )
    if evaluator.bn.active:
        warm_up = paper_note(len(ctx.prepared), spec.bn)
        if warm_up:
            notes.append(warm_up)
    return PathResult(
        init_path=init_path_s,
        final_path=final_path_s,
        arch=choice.adapter.name,
        arch_options=choice.adapter.options_to_dict(choice.options),
        data=ctx.data_record(),
        spec=spec,
        curve=curve,
        tolerance=tolerance,
        distance=distance,
        normalized_distance=normalized,
        device=str(ctx.device),
        notes=notes,
        timing=timing,
        unrelated=unrelated,
        unrelated_seeds=list(unrelated_seeds),
        sources=sources,
        alignment=alignment,
    )


def _aligned(
    adapter: Adapter,
    ctx: Setup,
    theta0: dict[str, torch.Tensor],
    theta1: dict[str, torch.Tensor],
    roles: TensorRoles,
    spec: EvalSpec,
) -> dict[str, Any]:
    """theta_T aligned to theta_0 by weight matching, with the unaligned path's numbers."""
    from mliscan.align import align as weight_match

    objective = list(roles.parameters)
    if spec.bn.mode == "interpolate":  # the stored statistics move along the path too
        objective += list(roles.bn_owned)
    aligned, record = weight_match(adapter, ctx.module, theta0, theta1, objective)
    unaligned = PathEvaluator(adapter, ctx.module, theta0, theta1, ctx.prepared, spec)
    curve = unaligned.run(alpha_grid(spec.alphas), gauss=False)
    dist, _ = metrics.weight_distance(theta0, theta1, roles.parameters)
    record.update(
        unaligned_distance=dist,
        unaligned_barrier=metrics.barrier(curve.alphas, curve.loss),
        unaligned_min_delta=metrics.min_delta(curve.loss),
        state=aligned,
    )
    return record


def _module_reader(
    ckpt: Checkpoint, mapped: dict[str, torch.Tensor]
) -> Callable[[str], torch.Tensor] | None:
    """Module name -> that tensor read again from the checkpoint file (None when the file
    cannot be re-read per tensor, or the adapter's key mapping does not pass tensors through)."""
    if ckpt.reader is None:
        return None
    by_id = {id(t): name for name, t in ckpt.tensors.items()}
    names: dict[str, str] = {}
    for k, t in mapped.items():
        name = by_id.get(id(t))
        if name is None:
            return None
        names[k] = name
    read = ckpt.reader
    return lambda k: read(names[k])


def _source_record(ckpt: Checkpoint) -> dict[str, Any]:
    src = ckpt.source
    return src.record() if isinstance(src, Resolved) else {"path": str(ckpt.path)}


def _step(ckpt: Checkpoint) -> int | None:
    """The training step a checkpoint is from: a Hub revision such as ``step1000``."""
    src = ckpt.source
    revision = src.revision if isinstance(src, Resolved) else None
    match = re.fullmatch(r"(?:step|checkpoint-|global_step)(\d+)", revision or "")
    return int(match.group(1)) if match else None


def swapped_note(init: Checkpoint, final: Checkpoint) -> str | None:
    """A warning when the endpoints look given in the wrong order: the files' own roles
    (``mliscan train`` writes them), or Hub revisions whose steps run backwards."""
    roles = (init.metadata.get("role"), final.metadata.get("role"))
    if roles[0] == "final" and roles[1] != "final":
        return (
            f"{init.path.name} is marked as the final weights of its run and {final.path.name} "
            f"as {roles[1] or 'unmarked'}: the endpoints look swapped (give INIT first, then FINAL)"
        )
    if roles[1] == "init" and roles[0] != "init":
        return (
            f"{final.path.name} is marked as the initial weights of its run: the endpoints look "
            "swapped (give INIT first, then FINAL)"
        )
    steps = (_step(init), _step(final))
    if steps[0] is not None and steps[1] is not None and steps[0] > steps[1]:
        return (
            f"INIT is from step {steps[0]} and FINAL from step {steps[1]}: the endpoints look "
            "swapped (give the earlier revision first)"
        )
    return None


def integrity_notes(init: Checkpoint, final: Checkpoint) -> list[Note]:
    """Warnings about mislabelled endpoints: swapped, the same file, or the same commit."""
    notes = []
    swapped = swapped_note(init, final)
    if swapped:
        notes.append(Note("swapped", swapped))
    a, b = init.source, final.source
    same_commit = isinstance(a, Resolved) and isinstance(b, Resolved) and a.commit == b.commit
    if same_commit and a.commit and a.kind == b.kind == "hf":
        notes.append(
            Note(
                "integrity",
                f"{a.text} and {b.text} resolve to the same commit {a.commit[:12]}: "
                "the two revisions are one",
            )
        )
    try:
        same_file = init.path.samefile(final.path)
    except OSError:
        same_file = False
    index = init.path.name.endswith(".index.json")
    if not same_file and not index and _same_bytes(init.path, final.path):
        notes.append(
            Note(
                "integrity",
                f"{init.path.name} and {final.path.name} are byte-identical files: the "
                "revisions may be mislabelled",
            )
        )
    return notes


def _same_bytes(a: Any, b: Any) -> bool:
    import filecmp

    try:
        return a.stat().st_size == b.stat().st_size and filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False
