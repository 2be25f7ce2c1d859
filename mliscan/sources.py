"""Checkpoint sources -> local paths. Resolving stays separate from loading.

* a plain path (file or folder), as before;
* ``hf:ORG/NAME[@REVISION]``: a Hugging Face Hub repository at a branch, tag or commit,
  fetched by ``huggingface_hub`` into its normal cache (weights, ``config.json`` and tokenizer
  files only; safetensors preferred over ``pytorch_model.bin``). ``offline`` or
  ``HF_HUB_OFFLINE=1`` reads the cache only;
* ``timm:NAME[.TAG]``: timm's pretrained weights (their Hub repository, ``timm/NAME.TAG``);
* ``init:SOURCE[?seed=S]``: a fresh initialisation of SOURCE's architecture, built by the
  adapter that claims SOURCE's ``config.json`` (transformers: ``from_config``, which runs the
  model's own ``_init_weights``; timm: ``create_model(pretrained=False)``), seeded with S
  (default 0) and written once into mliscan's cache (``$MLISCAN_CACHE``, else
  ``~/.cache/mliscan``), keyed by the source's resolved commit, the seed and library versions.

Every resolver returns a :class:`Resolved`: the local path plus what is needed to reproduce
it (repository, revision, resolved commit hash).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mliscan.checkpoints import is_safe_relative
from mliscan.errors import CheckpointNotFoundError, HubError, UsageError
from mliscan.paths import check_local_source, read_json

if TYPE_CHECKING:
    from huggingface_hub import CachedRepoInfo

PREFIXES = ("hf:", "timm:", "init:")
# Files fetched from a Hub repository: weights, their index, the config and the tokenizer.
CONFIG_FILES = ("config.json", "pretrained_cfg.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_REV_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]*$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


@dataclass
class Resolved:
    """Where a source's files lie, and what pins them."""

    text: str
    path: Path
    kind: str
    """'path', 'hf', 'timm' or 'init'."""
    repo: str | None = None
    revision: str | None = None
    commit: str | None = None
    """The resolved commit hash (hub sources)."""
    seed: int | None = None
    base: Resolved | None = None
    """For init: the source whose architecture was initialised."""
    files: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("base", "files")}
        out["path"] = str(self.path)
        if self.base is not None:
            out["base"] = self.base.record()
        return {k: v for k, v in out.items() if v is not None}


def is_offline(offline: bool = False) -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return offline or value in {"1", "true", "yes", "on"}


def hub_cache_dir() -> Path:
    """huggingface_hub's cache folder, read from the environment at call time
    (``huggingface_hub.constants.HF_HUB_CACHE`` is read once, when it is imported)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(home) / "hub"


def resolve(text: str, *, offline: bool = False) -> Resolved:
    """Resolve one source string to local files (downloading hub files unless offline)."""
    text = text.strip()
    if text.startswith("hf:"):
        return resolve_hf(text, offline=offline)
    if text.startswith("timm:"):
        return resolve_timm(text, offline=offline)
    if text.startswith("init:"):
        return resolve_init(text, offline=offline)
    selected = _RUN_SELECTOR.fullmatch(text)
    if selected and Path(selected.group(1)).expanduser().is_dir():
        folder = trainer_checkpoint(Path(selected.group(1)).expanduser(), selected.group(2))
        return Resolved(text=text, path=folder, kind="path")
    check_local_source(text)
    return Resolved(text=text, path=Path(text).expanduser(), kind="path")


# A Hugging Face Trainer run folder with a selector: RUN@first, RUN@last (its checkpoint-N
# folders ordered by the global step in their trainer_state.json).
_RUN_SELECTOR = re.compile(r"^(.+)@(first|last)$")
_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")


def trainer_checkpoints(run: Path) -> list[tuple[int, Path]]:
    """(global step, folder) of a Trainer run's checkpoint-N folders, in step order."""
    found = []
    for d in run.iterdir():
        m = _CHECKPOINT_DIR.match(d.name)
        if not m or not d.is_dir():
            continue
        step = int(m.group(1))
        try:
            state = read_json(d / "trainer_state.json")
            value = state.get("global_step") if isinstance(state, dict) else None
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
                step = value  # else the folder name's step (a damaged or foreign record)
        except (OSError, ValueError):
            pass  # no readable trainer_state.json (or beyond bounds): the folder name's step
        found.append((step, d))
    return sorted(found)


def trainer_checkpoint(run: Path, which: str) -> Path:
    found = trainer_checkpoints(run)
    if not found:
        raise CheckpointNotFoundError(
            f"{run}@{which}: {run} holds no checkpoint-N folders of a Hugging Face Trainer run"
        )
    return found[0][1] if which == "first" else found[-1][1]


def parse_hf(text: str) -> tuple[str, str]:
    body = text.removeprefix("hf:")
    repo, _, revision = body.partition("@")
    revision = revision or "main"
    if not _REPO_RE.match(repo) or ".." in repo:
        raise UsageError(
            f"{text}: not a Hub repository id; write hf:ORG/NAME or hf:ORG/NAME@REVISION"
        )
    if not _REV_RE.match(revision) or ".." in revision:
        raise UsageError(f"{text}: {revision!r} is not a valid revision (branch, tag or commit)")
    return repo, revision


def resolve_hf(text: str, *, offline: bool = False) -> Resolved:
    repo, revision = parse_hf(text)
    folder = _snapshot(text, repo, revision, is_offline(offline))
    commit = folder.name if _COMMIT_RE.match(folder.name) else None
    files = sorted(str(f.relative_to(folder)) for f in folder.rglob("*") if f.is_file())
    return Resolved(text, folder, "hf", repo=repo, revision=revision, commit=commit, files=files)


def _snapshot(text: str, repo: str, revision: str, offline: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cache = hub_cache_dir()
    try:
        patterns = None if offline else _wanted_files(repo, revision)
        folder = snapshot_download(
            repo,
            revision=revision,
            cache_dir=str(cache),
            local_files_only=offline,
            allow_patterns=patterns,
        )
    except GatedRepoError as exc:
        raise HubError(
            f"{text}: the repository is gated; accept its terms on huggingface.co and log in "
            "(`hf auth login`)"
        ) from exc
    except RevisionNotFoundError as exc:
        raise HubError(f"{text}: the repository has no revision {revision!r}") from exc
    except RepositoryNotFoundError as exc:
        raise HubError(
            f"{text}: no such repository on the Hub (or it is private: log in first)"
        ) from exc
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        cached = cached_repo(repo)
        if cached is None:
            raise HubError(
                f"{text}: not in the local Hugging Face cache ({cache}) and offline mode is on; "
                "run once with network access (unset HF_HUB_OFFLINE, drop --offline)"
            ) from exc
        raise HubError(
            f"{text}: revision {revision!r} is not in the local Hugging Face cache "
            f"({cache / cached.repo_path.name}); check the name, or fetch it once with network access"
        ) from exc
    except Exception as exc:
        # No network (httpx's ConnectError, timeouts), or an HTTP failure: say so, and
        # whether the cached copy --offline would use is there.
        network = isinstance(exc, (HfHubHTTPError, OSError)) or type(exc).__module__.startswith(
            ("httpx", "requests", "urllib3")
        )
        if not network:
            raise
        held = (
            "a cached copy is there"
            if cached_repo(repo) is not None
            else f"none is cached in {cache}"
        )
        raise HubError(
            f"{text}: cannot reach the Hugging Face Hub ({_first_line(exc)}); pass --offline "
            f"to use the cached copy ({held})"
        ) from exc
    return Path(folder)


def _wanted_files(repo: str, revision: str) -> list[str]:
    """The files worth fetching: safetensors when the repo has them, else torch .bin."""
    from huggingface_hub import HfApi

    info = HfApi().model_info(repo, revision=revision)
    names = [s.rfilename for s in (info.siblings or [])]
    bad = [n for n in names if not is_safe_relative(n)]
    if bad:
        raise HubError(
            f"hf:{repo}@{revision}: refused: file names leave the repository: {bad[0]!r}"
        )
    top = [n for n in names if "/" not in n]
    safetensors = [
        n for n in top if n.endswith(".safetensors") or n.endswith(".safetensors.index.json")
    ]
    bins = [
        n for n in top if n.startswith("pytorch_model") and n.endswith((".bin", ".bin.index.json"))
    ]
    weights = safetensors or bins
    if not weights:
        raise HubError(
            f"hf:{repo}@{revision}: holds no model.safetensors or pytorch_model.bin at its top level"
        )
    keep = set(CONFIG_FILES) | set(TOKENIZER_FILES) | {"preprocessor_config.json"}
    return sorted(weights + [n for n in top if n in keep])


def resolve_timm(text: str, *, offline: bool = False) -> Resolved:
    name = text.removeprefix("timm:")
    try:
        import timm.models
    except ImportError as exc:  # pragma: no cover - timm is a dependency
        raise UsageError("timm: sources need the timm package (pip install timm)") from exc
    cfg = timm.models.get_pretrained_cfg(name) if name else None
    if cfg is None:
        raise UsageError(
            f"{text}: timm has no pretrained weights named {name!r}; list them with "
            'python -c "import timm; print(timm.list_models(pretrained=True))"'
        )
    hub_id = getattr(cfg, "hf_hub_id", None)
    if not hub_id or hub_id.endswith("/"):
        raise UsageError(
            f"{text}: these weights are not on the Hugging Face Hub; download the file "
            "yourself and pass its path with --arch timm --arch-opt model=" + name.split(".")[0]
        )
    repo, _, revision = hub_id.partition("@")
    try:
        inner = resolve_hf(f"hf:{repo}@{revision or 'main'}", offline=offline)
    except HubError as exc:
        raise HubError(
            f"{text} (Hub repository {repo}): {exc}".replace(
                f"hf:{repo}@{revision or 'main'}: ", ""
            )
        ) from exc
    return Resolved(
        text,
        inner.path,
        "timm",
        repo=repo,
        revision=inner.revision,
        commit=inner.commit,
        files=inner.files,
    )


def parse_init(text: str) -> tuple[str, int]:
    body = text.removeprefix("init:")
    base, _, query = body.partition("?")
    seed = 0
    if query:
        key, _, value = query.partition("=")
        if key != "seed" or not value.lstrip("-").isdigit():
            raise UsageError(f"{text}: the only init: option is ?seed=INTEGER")
        seed = int(value)
    if not base:
        raise UsageError(f"{text}: write init:SOURCE, e.g. init:timm:resnet18 or init:hf:gpt2")
    return base, seed


def resolve_init(text: str, *, offline: bool = False) -> Resolved:
    """``init:SOURCE[?seed=S]``: resolve SOURCE; the fresh weights are built above this layer
    (``mliscan.fresh.materialize``: building a model needs the adapters)."""
    base_text, seed = parse_init(text)
    if base_text.startswith("init:"):
        raise UsageError(f"{text}: init: cannot be nested")
    base = resolve(base_text, offline=offline)
    return Resolved(text, base.path, "init", seed=seed, base=base, commit=base.commit)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ---- revision lists (mliscan trajectory over a Hub repository's training steps) ----------
_GLOB_CHARS = set("*?[")


def cached_repo(repo: str) -> CachedRepoInfo | None:
    """huggingface_hub's record of the model repository ``repo`` in the local cache
    (``scan_cache_dir``: a ``CachedRepoInfo`` with its revisions and refs), or None when the
    cache holds no copy of it that the library reads as consistent."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(hub_cache_dir())
    except (CacheNotFound, OSError, ValueError):  # no cache folder yet, or not a folder
        return None
    return next((r for r in info.repos if r.repo_type == "model" and r.repo_id == repo), None)


def cached_revisions(repo: str) -> list[str]:
    """The branch and tag names of ``repo`` held in the local Hugging Face cache."""
    cached = cached_repo(repo)
    return sorted(cached.refs) if cached is not None else []


def remote_revisions(repo: str) -> list[str]:
    """The branch and tag names of ``repo`` on the Hub."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        refs = HfApi().list_repo_refs(repo)
    except RepositoryNotFoundError as exc:
        raise HubError(
            f"hf:{repo}: no such repository on the Hub (or it is private: log in first)"
        ) from exc
    except Exception as exc:
        raise HubError(
            f"hf:{repo}: cannot list its revisions on the Hub ({_first_line(exc)}); pass "
            "--offline to use the revisions in the local cache"
        ) from exc
    return sorted({r.name for r in [*refs.branches, *refs.tags]})


def step_of(name: str) -> int | None:
    """The training step a revision or file name carries: its last integer (``step1000`` ->
    1000, ``epoch-5`` -> 5); None when it has none (``main``)."""
    found = re.findall(r"\d+", name)
    return int(found[-1]) if found else None


def expand_revisions(repo: str, revisions: str, *, offline: bool = False) -> list[str]:
    """``--revisions step0,step1000,main`` or ``'step*'``: explicit names in the order given;
    each pattern expands, in step order, to the matching branches and tags (from the local
    cache when offline, else from the Hub)."""
    import fnmatch

    wanted = [r.strip() for r in revisions.split(",") if r.strip()]
    if not wanted:
        raise UsageError("--revisions is empty; give names (step0,step1000) or a pattern ('step*')")
    known: list[str] | None = None
    out: list[str] = []
    for item in wanted:
        if not _GLOB_CHARS & set(item):
            if not _REV_RE.match(item) or ".." in item:
                raise UsageError(f"--revisions: {item!r} is not a valid revision name")
            out.append(item)
            continue
        if known is None:
            known = cached_revisions(repo) if is_offline(offline) else remote_revisions(repo)
        matched = [r for r in known if fnmatch.fnmatchcase(r, item)]
        if not matched:
            where = "in the local Hugging Face cache" if is_offline(offline) else "on the Hub"
            raise UsageError(
                f"--revisions {item!r} matches no revision of hf:{repo} {where} "
                f"({len(known)} known)"
            )
        matched.sort(key=lambda r: (step_of(r) is None, step_of(r) or 0, r))
        out.extend(matched)
    return list(dict.fromkeys(out))  # each once, where it first appears
