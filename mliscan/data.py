"""Datasets as in-memory tensors, read from bundled data or a local folder; never downloaded.

* ``digits``: scikit-learn's bundled 8x8 handwritten digits, all 1797 samples in
  scikit-learn's order, pixel values / 16, shape [N, 1, 8, 8]. It has no test split.
* ``mnist`` / ``fashion-mnist``: torchvision's layout ``DIR/MNIST/raw/train-images-idx3-ubyte``
  (``FashionMNIST`` for the latter; ``.gz`` accepted), pixel values / 255, shape [N, 1, 28, 28].
* ``cifar10`` / ``cifar100``: torchvision's layout ``DIR/cifar-10-batches-py/data_batch_1..5``
  (``DIR/cifar-100-python/train``), pixel values / 255 then standardised per channel with the
  usual dataset constants below, shape [N, 3, 32, 32]. The batches are pickles: they are read
  by an unpickler that admits only numpy array reconstruction, never arbitrary objects.

* ``imagefolder``: ``DIR/CLASS/IMAGE`` (torchvision's ImageFolder layout; class folders
  sorted by name are labels 0..K-1, so ImageNet's synset folders give the standard indices),
  preprocessed by the model's own transform (timm models).
* ``wikitext2``: ``DIR/wiki.train.tokens`` and ``wiki.test.tokens`` (WikiText-2's layout),
  word-level, rows of ``seq_len`` (default 35) token ids with next-token targets;
  ``tinytext``: a bundled 1,200-word corpus in the same layout (tests, demos).
* ``text``: a local .txt/.jsonl/.csv file tokenized by the model's tokenizer (``text.py``).

``limit`` keeps the first N examples, so a subset is deterministic and easy to reproduce.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mliscan.errors import DataError, DataNotFoundError, UsageError
from mliscan.paths import atomic_path, env_value, mliscan_cache_dir
from mliscan.spec import DataSpec, Split
from mliscan.text import BUNDLED_TINYTEXT, load_text, load_wikitext


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset declares: how it is loaded and what it holds (the registry below
    replaces a chain of name tests in every caller)."""

    name: str
    load: Any
    """``load(spec, root, hooks) -> Dataset``; ``root`` is ``--data-dir`` (None if unused)."""
    needs_dir: bool
    """Read from a user's folder (``--data-dir``); nothing is ever downloaded."""
    test_split: bool
    """Has a held-out test split (``--split test``)."""
    description: str


REGISTRY: dict[str, DatasetInfo] = {}


def register_dataset(name: str, *, needs_dir: bool, test_split: bool, description: str) -> Any:
    """Declare a dataset where its loader is written (as timm's ``register_model``)."""

    def wrap(load: Any) -> Any:
        if name in REGISTRY:
            raise ValueError(f"dataset {name!r} is registered twice")
        REGISTRY[name] = DatasetInfo(name, load, needs_dir, test_split, description)
        return load

    return wrap


def has_test_split(name: str) -> bool:
    info = REGISTRY.get(name)
    return bool(info and info.test_split)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".gif", ".tif", ".tiff")
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_IDX_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_IDX_PREFIX = {"train": "train", "test": "t10k"}


@dataclass
class Dataset:
    """A labelled dataset held in memory."""

    name: str
    split: Split
    inputs: torch.Tensor
    """float32, [N, C, H, W]."""
    targets: torch.Tensor
    """int64 class labels, [N]."""
    num_classes: int
    streamed: bool = False
    """True when ``inputs`` is a file-backed tensor too large to hold in memory: it is
    evaluated batch by batch, never copied whole (see ``evaluate.StreamedInputs``)."""

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.inputs.shape[1:])


def load_dataset(spec: DataSpec, hooks: Any = None) -> Dataset:
    """Load the dataset a :class:`DataSpec` names (``hooks``: the model's tokenizer or
    image transform, :class:`mliscan.adapter.DataHooks`, for text and image folders)."""
    if spec.name not in REGISTRY:
        raise DataError(f"unknown dataset {spec.name!r}; choose one of {', '.join(DATASETS)}")
    if spec.limit is not None and spec.limit < 1:
        raise UsageError(f"--data-limit must be at least 1 (got {spec.limit})")
    info = REGISTRY[spec.name]
    root = None
    if info.needs_dir:
        if spec.data_dir is None:
            raise UsageError(
                f"--data {spec.name} reads local files: pass --data-dir DIR "
                "(torchvision's on-disk layout; nothing is downloaded)"
            )
        root = Path(spec.data_dir)
    ds = info.load(spec, root, hooks)
    if spec.limit is not None:
        ds.inputs = ds.inputs[: spec.limit].contiguous()
        ds.targets = ds.targets[: spec.limit].contiguous()
    return ds


def _digits(split: Split) -> Dataset:
    if split != "train":
        raise UsageError("digits has no test split: it is the training set (use --split train)")
    table = _digits_table()
    x = torch.from_numpy(np.asarray(table[:, :-1], dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(np.asarray(table[:, -1], dtype=np.int64))
    return Dataset("digits", split, x.contiguous(), y, 10)


def _digits_table() -> np.ndarray:
    """scikit-learn's bundled digits.csv.gz (64 pixels + label per row), read in place.

    Importing sklearn.datasets costs about two seconds of start-up (scipy.stats); the file it
    reads is found through the package's location without importing it. Same rows as
    ``sklearn.datasets.load_digits`` (tested); falls back to it if the file has moved.
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return np.loadtxt(path, delimiter=",")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.column_stack([bunch.data, bunch.target])


def _find(paths: list[Path], what: str) -> Path:
    for p in paths:
        if p.is_file():
            return p
        if p.exists():
            _regular_file(p)  # a FIFO or device: refused, never opened
    raise DataNotFoundError(
        f"{what}: missing {paths[0]} (or {paths[0].name}.gz); place the dataset there in "
        "torchvision's layout (nothing is downloaded)"
    )


# The largest IDX file read (MNIST's training images are 47 MB): a header or a compressed
# file that would inflate beyond this is refused before it is expanded.
MAX_IDX_BYTES = 1 << 30


def _regular_file(path: Path) -> None:
    """Refuse anything but a regular file before opening it (a FIFO would block forever)."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror})") from exc
    if not stat.S_ISREG(mode):
        raise DataError(f"{path}: not a regular file (a pipe, device or socket?)")


def _read_capped(path: Path, limit: int) -> bytes:
    """The file's bytes (inflated when .gz), refusing to hold more than ``limit``."""
    _regular_file(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read(limit + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from exc
    if len(raw) > limit:
        raise DataError(f"{path}: larger than {limit >> 20} MB once inflated; not a dataset file")
    return raw


def _read_idx(path: Path, ndim: int, limit: int = MAX_IDX_BYTES) -> np.ndarray:
    _regular_file(path)
    # the header first: its dimensions bound what may be read
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4 + 4 * ndim)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from exc
    if len(head) < 4 + 4 * ndim or head[:2] != b"\x00\x00" or head[2] != 0x08 or head[3] != ndim:
        raise DataError(f"{path}: not an IDX file of unsigned bytes with {ndim} dimensions")
    dims = tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size = math.prod(dims)
    if dims[0] == 0 or size == 0:
        raise DataError(f"{path}: holds no examples (header dimensions {dims})")
    if size > limit:
        raise DataError(f"{path}: header dimensions {dims} exceed {limit >> 20} MB; corrupt")
    raw = _read_capped(path, 4 + 4 * ndim + size)
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != size:
        raise DataError(f"{path}: truncated (header says {dims}, holds {body.size} bytes)")
    return body.reshape(dims)


def _idx_dataset(name: str, root: Path, split: Split) -> Dataset:
    raw = root / _IDX_FOLDERS[name] / "raw"
    prefix = _IDX_PREFIX[split]
    img_name, lbl_name = f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
    images = _read_idx(_find([raw / img_name, raw / f"{img_name}.gz"], name), 3)
    labels = _read_idx(_find([raw / lbl_name, raw / f"{lbl_name}.gz"], name), 1)
    if len(images) != len(labels):
        raise DataError(f"{raw}: {len(images)} images but {len(labels)} labels")
    if labels.max() >= 10:
        raise DataError(f"{raw / lbl_name}: label {int(labels.max())} outside 0..9")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return Dataset(name, split, x.contiguous(), y, 10)


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Admits numpy arrays and builtins only: CIFAR batches need nothing else."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


# A CIFAR batch file is ~31 MB; its unpickled arrays may not exceed this in all (a pickle
# that repeats a reference to a large object would otherwise multiply memory).
MAX_CIFAR_BYTES = 256 << 20


def _read_cifar_batch(path: Path) -> dict[str, object]:
    raw = _read_capped(path, MAX_CIFAR_BYTES)
    unpickler = _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes")
    try:
        obj = unpickler.load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, MemoryError) as exc:
        raise DataError(f"{path}: not a CIFAR python batch ({exc})") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a CIFAR python batch (a dict)")
    return {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _pixels(data: object, path: Path) -> np.ndarray:
    """A batch's images as uint8 [N, 3, 32, 32]: byte values only (0..255), bounded size."""
    if not isinstance(data, np.ndarray) or data.nbytes > MAX_CIFAR_BYTES:
        raise DataError(f"{path}: 'data' is not an image array of a CIFAR batch's size")
    if data.dtype != np.uint8:
        if not np.issubdtype(data.dtype, np.integer) or data.min() < 0 or data.max() > 255:
            raise DataError(f"{path}: pixels must be bytes 0..255 (got {data.dtype})")
        data = data.astype(np.uint8)
    if data.size == 0 or data.size % 3072:
        raise DataError(f"{path}: lacks 'data' of the right shape (N x 3072 bytes)")
    return data.reshape(-1, 3, 32, 32)


def _labels(obj: object, path: Path) -> np.ndarray:
    """A batch's labels: a flat list or array of whole numbers (bounded length)."""
    if (
        isinstance(obj, np.ndarray)
        and obj.ndim == 1
        and np.issubdtype(obj.dtype, np.integer)
        and len(obj) <= MAX_CIFAR_LABELS
    ):
        return obj.astype(np.int64)
    if isinstance(obj, list) and len(obj) <= MAX_CIFAR_LABELS and all(type(v) is int for v in obj):
        return np.asarray(obj, dtype=np.int64)
    raise DataError(f"{path}: labels must be a flat list of whole numbers")


MAX_CIFAR_LABELS = 1_000_000


def _cifar(name: str, root: Path, split: Split) -> Dataset:
    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        label_key, classes = "labels", 10
    else:
        folder = root / "cifar-100-python"
        files = ["train" if split == "train" else "test"]
        label_key, classes = "fine_labels", 100
    missing = [folder / f for f in files if not (folder / f).is_file()]
    if missing:
        raise DataNotFoundError(
            f"{name}: missing {', '.join(str(m) for m in missing)}; place the dataset there in "
            "torchvision's layout (nothing is downloaded)"
        )
    xs, ys = [], []
    for f in files:
        batch = _read_cifar_batch(folder / f)
        if "data" not in batch or label_key not in batch:
            raise DataError(f"{folder / f}: lacks 'data'/'{label_key}' of the right shape")
        data = _pixels(batch["data"], folder / f)
        labels = _labels(batch[label_key], folder / f)
        if len(data) != len(labels) or len(data) == 0:
            raise DataError(f"{folder / f}: {len(data)} images but {len(labels)} labels")
        if labels.min() < 0 or labels.max() >= classes:
            bad = int(labels.max() if labels.max() >= classes else labels.min())
            raise DataError(f"{folder / f}: label {bad} outside 0..{classes - 1}")
        xs.append(data)
        ys.append(labels)
    mean, std = CIFAR_STATS[name]
    x = torch.from_numpy(np.concatenate(xs).astype(np.float32) / 255.0)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    y = torch.from_numpy(np.concatenate(ys))
    return Dataset(name, split, x.contiguous(), y, classes)


def _imagefolder(root: Path, spec: DataSpec, hooks: Any) -> Dataset:
    if not root.is_dir():
        raise DataNotFoundError(f"{root}: no such folder; pass --data-dir DIR (DIR/CLASS/IMAGE)")
    transform = getattr(hooks, "image_transform", None)
    if transform is None:
        raise UsageError(
            "--data imagefolder needs a model that defines its preprocessing (--arch timm)"
        )
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataNotFoundError(f"{root}: no class subfolders; expected DIR/CLASS/IMAGE files")
    files = [
        (f, label)
        for label, c in enumerate(classes)
        for f in sorted((root / c).iterdir())
        if f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if spec.limit is not None:
        files = files[: spec.limit]
    if not files:
        raise DataNotFoundError(
            f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders"
        )
    from PIL import Image, UnidentifiedImageError

    def decode(f: Path) -> torch.Tensor:
        try:
            with Image.open(f) as im:
                return transform(im.convert("RGB")).float()
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{f}: not a readable image ({exc})") from exc

    y = torch.tensor([label for _, label in files], dtype=torch.int64)
    first = decode(files[0][0])
    total = len(files) * first.numel() * first.element_size()
    if total <= data_memory_budget():
        x = torch.stack([first, *(decode(f) for f, _ in files[1:])]).contiguous()
        return Dataset("imagefolder", spec.split, x, y, len(classes))
    x = _decoded_file(root, files, transform, first, decode)
    return Dataset("imagefolder", spec.split, x, y, len(classes), streamed=True)


def data_memory_budget() -> int:
    """Bytes of decoded data held in memory before it is streamed from a disk cache instead:
    ``$MLISCAN_DATA_MEMORY``, else a quarter of physical memory."""
    budget = env_value("MLISCAN_DATA_MEMORY")
    if budget is not None:
        return budget
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 4 << 30


def _decoded_file(
    root: Path, files: list[tuple[Path, int]], transform: Any, first: torch.Tensor, decode: Any
) -> torch.Tensor:
    """Decode the images once, in order, into a float32 file in mliscan's cache (keyed by
    the file list, sizes, times and the transform) and map it back without reading it."""
    import hashlib

    h = hashlib.sha256(repr(transform).encode())
    for f, label in files:
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}|{label}\n".encode())
    shape = (len(files), *first.shape)
    path = mliscan_cache_dir() / "data" / f"imagefolder-{h.hexdigest()[:20]}.f32"
    if not path.is_file() or path.stat().st_size != math.prod(shape) * 4:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as out:
            out.write(first.numpy().tobytes())
            for f, _ in files[1:]:
                x = decode(f)
                if tuple(x.shape) != tuple(first.shape):
                    raise DataError(
                        f"{f}: decodes to {tuple(x.shape)}, others to {tuple(first.shape)}"
                    )
                out.write(x.numpy().tobytes())
    flat = torch.from_file(str(path), shared=False, size=math.prod(shape), dtype=torch.float32)
    return flat.view(shape)


# ---- the datasets ------------------------------------------------------------------------
@register_dataset(
    "digits", needs_dir=False, test_split=False, description="scikit-learn's 1797 digits"
)
def _load_digits(spec: DataSpec, root: Path | None, hooks: Any) -> Dataset:
    return _digits(spec.split)


@register_dataset(
    "fashion-mnist",
    needs_dir=True,
    test_split=True,
    description="Fashion-MNIST in torchvision's layout",
)
@register_dataset(
    "mnist", needs_dir=True, test_split=True, description="MNIST in torchvision's layout"
)
def _load_idx(spec: DataSpec, root: Path | None, hooks: Any) -> Dataset:
    return _idx_dataset(_name(spec), _folder(root), spec.split)


@register_dataset(
    "cifar100", needs_dir=True, test_split=True, description="CIFAR-100 (python batches)"
)
@register_dataset(
    "cifar10", needs_dir=True, test_split=True, description="CIFAR-10 (python batches)"
)
def _load_cifar(spec: DataSpec, root: Path | None, hooks: Any) -> Dataset:
    return _cifar(_name(spec), _folder(root), spec.split)


@register_dataset(
    "wikitext2", needs_dir=True, test_split=True, description="WikiText-2 token files"
)
def _load_wikitext2(spec: DataSpec, root: Path | None, hooks: Any) -> Dataset:
    root = _folder(root)
    folder = root / "wikitext-2" if (root / "wikitext-2").is_dir() else root
    x, y, vocab = load_wikitext(folder, spec.split, spec.seq_len, _name(spec))
    return Dataset(_name(spec), spec.split, x, y, vocab)


@register_dataset(
    "tinytext", needs_dir=False, test_split=True, description="a bundled 1,200-word corpus"
)
def _load_tinytext(spec: DataSpec, root: Path | None, hooks: Any) -> Dataset:
    x, y, vocab = load_wikitext(BUNDLED_TINYTEXT, spec.split, spec.seq_len, _name(spec))
    return Dataset(_name(spec), spec.split, x, y, vocab)


@register_dataset(
    "imagefolder",
    needs_dir=True,
    test_split=False,
    description="class folders of images (the model's transform)",
)
def _load_imagefolder(spec: DataSpec, root: Path | None, hooks: Any) -> Dataset:
    return _imagefolder(_folder(root), spec, hooks)


@register_dataset(
    "text", needs_dir=False, test_split=False, description="a text file (the model's tokenizer)"
)
def _load_text(spec: DataSpec, root: Path | None, hooks: Any) -> Dataset:
    x, y, classes = load_text(spec, hooks)
    return Dataset("text", spec.split, x, y, classes)


def _name(spec: DataSpec) -> str:
    if spec.name is None:  # pragma: no cover - load_dataset looks the name up first
        raise UsageError("no dataset named: pass --data NAME")
    return spec.name


def _folder(root: Path | None) -> Path:
    if root is None:  # pragma: no cover - the registry marks these needs_dir
        raise UsageError("this dataset reads local files: pass --data-dir DIR")
    return root


# Stacked decorators register bottom-up: the names in registration order.
DATASETS = tuple(REGISTRY)
