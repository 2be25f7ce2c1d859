"""Datasets as in-memory tensors, read from bundled data or a local folder; never downloaded.

* ``digits``: scikit-learn's bundled 8x8 handwritten digits, all 1797 samples in
  scikit-learn's order, pixel values / 16, shape [N, 1, 8, 8]. It has no test split.
* ``mnist`` / ``fashion-mnist``: torchvision's layout ``DIR/MNIST/raw/train-images-idx3-ubyte``
  (``FashionMNIST`` for the latter; ``.gz`` accepted), pixel values / 255, shape [N, 1, 28, 28].
* ``cifar10`` / ``cifar100``: torchvision's layout ``DIR/cifar-10-batches-py/data_batch_1..5``
  (``DIR/cifar-100-python/train``), pixel values / 255 then standardised per channel with the
  usual dataset constants below, shape [N, 3, 32, 32]. The batches are pickles: they are read
  by an unpickler that admits only numpy array reconstruction, never arbitrary objects.

``limit`` keeps the first N examples, so a subset is deterministic and easy to reproduce.
"""

from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mliscan.errors import DataError, DataNotFoundError, UsageError
from mliscan.spec import DataSpec

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100")
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
    split: str
    inputs: torch.Tensor
    """float32, [N, C, H, W]."""
    targets: torch.Tensor
    """int64 class labels, [N]."""
    num_classes: int

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.inputs.shape[1:])


def load_dataset(spec: DataSpec) -> Dataset:
    """Load the dataset a :class:`DataSpec` names."""
    if spec.name not in DATASETS:
        raise DataError(f"unknown dataset {spec.name!r}; choose one of {', '.join(DATASETS)}")
    if spec.limit is not None and spec.limit < 1:
        raise UsageError(f"--data-limit must be at least 1 (got {spec.limit})")
    if spec.name == "digits":
        ds = _digits(spec.split)
    else:
        if spec.data_dir is None:
            raise UsageError(
                f"--data {spec.name} reads local files: pass --data-dir DIR "
                "(torchvision's on-disk layout; nothing is downloaded)"
            )
        root = Path(spec.data_dir)
        if spec.name in _IDX_FOLDERS:
            ds = _idx_dataset(spec.name, root, spec.split)
        else:
            ds = _cifar(spec.name, root, spec.split)
    if spec.limit is not None:
        ds.inputs = ds.inputs[: spec.limit].contiguous()
        ds.targets = ds.targets[: spec.limit].contiguous()
    return ds


def _digits(split: str) -> Dataset:
    if split != "train":
        raise UsageError("digits has no test split: it is the training set (use --split train)")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(np.asarray(bunch.data, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    return Dataset("digits", split, x.contiguous(), y, 10)


def _find(paths: list[Path], what: str) -> Path:
    for p in paths:
        if p.is_file():
            return p
    raise DataNotFoundError(
        f"{what}: missing {paths[0]} (or {paths[0].name}.gz); place the dataset there in "
        "torchvision's layout (nothing is downloaded)"
    )


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from exc
    if len(raw) < 4 + 4 * ndim or raw[:2] != b"\x00\x00" or raw[2] != 0x08 or raw[3] != ndim:
        raise DataError(f"{path}: not an IDX file of unsigned bytes with {ndim} dimensions")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: truncated (header says {dims}, holds {body.size} bytes)")
    return body.reshape(dims)


def _idx_dataset(name: str, root: Path, split: str) -> Dataset:
    raw = root / _IDX_FOLDERS[name] / "raw"
    prefix = _IDX_PREFIX[split]
    img_name, lbl_name = f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
    images = _read_idx(_find([raw / img_name, raw / f"{img_name}.gz"], name), 3)
    labels = _read_idx(_find([raw / lbl_name, raw / f"{lbl_name}.gz"], name), 1)
    if len(images) != len(labels):
        raise DataError(f"{raw}: {len(images)} images but {len(labels)} labels")
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


def _read_cifar_batch(path: Path) -> dict[str, object]:
    try:
        with open(path, "rb") as f:
            obj = _ArrayOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: not a CIFAR python batch ({exc})") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a CIFAR python batch (a dict)")
    return {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _cifar(name: str, root: Path, split: str) -> Dataset:
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
        try:
            data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            labels = np.asarray(batch[label_key], dtype=np.int64)
        except (KeyError, ValueError) as exc:
            raise DataError(f"{folder / f}: lacks 'data'/'{label_key}' of the right shape") from exc
        if len(data) != len(labels):
            raise DataError(f"{folder / f}: {len(data)} images but {len(labels)} labels")
        xs.append(data)
        ys.append(labels)
    mean, std = CIFAR_STATS[name]
    x = torch.from_numpy(np.concatenate(xs).astype(np.float32) / 255.0)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    y = torch.from_numpy(np.concatenate(ys))
    return Dataset(name, split, x.contiguous(), y, classes)
