"""Malformed data for every dataset reader: a clear DataError (exit 2), bounded work."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from mliscan.data import load_dataset
from mliscan.errors import DataError, MliscanError
from mliscan.spec import DataSpec


def _idx(dims: tuple[int, ...], body: bytes, ndim: int | None = None) -> bytes:
    nd = len(dims) if ndim is None else ndim
    return bytes([0, 0, 0x08, nd]) + b"".join(d.to_bytes(4, "big") for d in dims) + body


def _mnist(tmp_path: Path, images: bytes, labels: bytes, gz: bool = False) -> DataSpec:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, data in (("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", labels)):
        if gz:
            (raw / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (raw / name).write_bytes(data)
    return DataSpec("mnist", data_dir=str(tmp_path))


GOOD_LABELS = _idx((2,), bytes([1, 2]))
GOOD_IMAGES = _idx((2, 28, 28), bytes(2 * 28 * 28))


@pytest.mark.parametrize(
    ("images", "labels", "needle"),
    [
        (b"\x00\x00\x08", GOOD_LABELS, "not an IDX file"),
        (_idx((2, 28, 28), b"", ndim=1), GOOD_LABELS, "not an IDX file"),
        (_idx((0, 28, 28), b""), _idx((0,), b""), "holds no examples"),
        (_idx((2**32 - 1, 2**32 - 1, 28), b"\x00" * 10), GOOD_LABELS, "exceed"),
        (_idx((2, 28, 28), bytes(100)), GOOD_LABELS, "truncated"),
        (GOOD_IMAGES, _idx((2,), bytes([1, 200])), "label 200 outside 0..9"),
        (GOOD_IMAGES, _idx((3,), bytes([1, 2, 3])), "2 images but 3 labels"),
    ],
)
def test_mnist_malformed(tmp_path: Path, images: bytes, labels: bytes, needle: str) -> None:
    with pytest.raises(DataError, match=needle):
        load_dataset(_mnist(tmp_path, images, labels))


def test_mnist_gzip_bomb_is_not_inflated_past_its_header(tmp_path: Path) -> None:
    """A small .gz whose header claims 2 images but which inflates to 64 MB of zeros."""
    body = bytes(64 << 20)
    spec = _mnist(tmp_path, _idx((2, 28, 28), body), GOOD_LABELS, gz=True)
    with pytest.raises(DataError, match="larger than"):
        load_dataset(spec)


def test_mnist_fifo_is_refused(tmp_path: Path) -> None:
    spec = _mnist(tmp_path, GOOD_IMAGES, GOOD_LABELS)
    target = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    target.unlink()
    os.mkfifo(target)
    with pytest.raises(DataError, match="not a regular file"):
        load_dataset(spec)


def _cifar(tmp_path: Path, obj: object, raw: bytes | None = None) -> DataSpec:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir(exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(raw if raw is not None else pickle.dumps(obj, protocol=2))
    return DataSpec("cifar10", data_dir=str(tmp_path))


PIXELS = np.zeros((2, 3072), dtype=np.uint8)


@pytest.mark.parametrize(
    ("obj", "needle"),
    [
        ([1, 2, 3], "a dict"),
        ({b"data": PIXELS}, "lacks"),
        ({b"data": PIXELS, b"labels": [1, 10]}, "label 10 outside 0..9"),
        ({b"data": PIXELS, b"labels": [1, -1]}, "label -1 outside 0..9"),
        ({b"data": PIXELS.astype(np.int64) + 300, b"labels": [1, 2]}, "pixels must be bytes"),
        ({b"data": PIXELS, b"labels": ["a", "b"]}, "whole numbers"),
        ({b"data": PIXELS[:, :100], b"labels": [1, 2]}, "lacks"),
        ({b"data": [PIXELS] * 3, b"labels": [1, 2]}, "not an image array"),
    ],
)
def test_cifar_malformed(tmp_path: Path, obj: object, needle: str) -> None:
    with pytest.raises(DataError, match=needle):
        load_dataset(_cifar(tmp_path, obj))


def test_cifar_shared_references_are_bounded(tmp_path: Path) -> None:
    """A small pickle that repeats one list a million times: refused, not expanded to GBs."""
    row = list(range(3072))
    bomb = pickle.dumps({b"data": PIXELS, b"labels": [row] * 1_000_000}, protocol=2)
    assert len(bomb) < 8 << 20
    with pytest.raises(DataError):
        load_dataset(_cifar(tmp_path, None, raw=bomb))


def test_cifar_garbage_bytes(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a CIFAR python batch"):
        load_dataset(_cifar(tmp_path, None, raw=b"\x80\x02garbage"))


def test_wikitext_not_utf8_and_too_short(tmp_path: Path) -> None:
    folder = tmp_path / "wikitext-2"
    folder.mkdir()
    (folder / "wiki.train.tokens").write_bytes(b"\xff\xfe\xfa")
    (folder / "wiki.test.tokens").write_text("a b")
    with pytest.raises(DataError, match="not UTF-8"):
        load_dataset(DataSpec("wikitext2", data_dir=str(tmp_path)))
    (folder / "wiki.train.tokens").write_text("a b")
    with pytest.raises(DataError, match="fewer than"):
        load_dataset(DataSpec("wikitext2", data_dir=str(tmp_path)))


def test_every_reader_fails_as_a_typed_error(tmp_path: Path) -> None:
    """An empty folder for every named dataset: a typed error (exit 2), never a crash."""
    for name in ("mnist", "fashion-mnist", "cifar10", "cifar100", "wikitext2"):
        with pytest.raises(MliscanError):
            load_dataset(DataSpec(name, data_dir=str(tmp_path / "empty")))


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("c.jsonl", '{"text": "a"}\n{"text": 5}\n', "needs an object with a 'text' string"),
        ("c.jsonl", "not json\n", "not JSON"),
        ("c.jsonl", "[" * 100000 + "]" * 100000 + "\n", "JSON"),
        ("c.csv", "title,label\nx,1\n", "needs a header row with a 'text' column"),
        ("c.csv", 'text,label\n"' + "x" * (1 << 18) + '",1\n', "CSV"),
        ("c.txt", b"\xff\xfe\x00bad", "not UTF-8"),
    ],
)
def test_text_corpora_malformed(tmp_path: Path, name: str, content, needle: str) -> None:
    from mliscan.text import read_documents

    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(DataError, match=needle):
        read_documents(path)


def test_image_folder_with_a_broken_image(tmp_path: Path) -> None:
    """A file named .png that is not an image: a DataError naming it."""
    from mliscan.data import _imagefolder

    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "a.png").write_bytes(b"not a png at all")

    class Hooks:
        @staticmethod
        def image_transform(im):  # pragma: no cover - never reached
            raise AssertionError

    with pytest.raises(DataError, match=r"a\.png: not a readable image"):
        _imagefolder(tmp_path, DataSpec("imagefolder", data_dir=str(tmp_path)), Hooks)
