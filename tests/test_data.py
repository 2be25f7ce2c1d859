"""Datasets: bundled digits, and tiny files in torchvision's exact on-disk layouts."""

from __future__ import annotations

import functools
import gzip
import operator
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mliscan.data import load_dataset
from mliscan.errors import DataError, DataNotFoundError, UsageError
from mliscan.spec import DataSpec


def test_digits_is_sklearn_order_over_16() -> None:
    from sklearn.datasets import load_digits

    ds = load_dataset(DataSpec("digits"))
    ref = load_digits()
    assert len(ds) == 1797 and ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    np.testing.assert_array_equal(
        ds.inputs.reshape(1797, 64).numpy(), (ref.data / 16).astype(np.float32)
    )
    np.testing.assert_array_equal(ds.targets.numpy(), ref.target)
    assert float(ds.inputs.max()) == 1.0


def test_digits_falls_back_to_sklearn_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from mliscan import data

    direct = data._digits_table()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    np.testing.assert_array_equal(data._digits_table(), direct)


def test_limit_takes_the_first_examples() -> None:
    full = load_dataset(DataSpec("digits"))
    part = load_dataset(DataSpec("digits", limit=100))
    assert torch.equal(part.inputs, full.inputs[:100])
    with pytest.raises(UsageError):
        load_dataset(DataSpec("digits", split="test"))


def _write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


@pytest.mark.parametrize(
    ("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")]
)
@pytest.mark.parametrize("compress", [False, True])
def test_idx_layout(tmp_path: Path, name: str, folder: str, compress: bool) -> None:
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28))
    labels = rng.integers(0, 10, size=7)
    _write_idx(raw / "train-images-idx3-ubyte", images, compress)
    _write_idx(raw / "train-labels-idx1-ubyte", labels, compress)
    ds = load_dataset(DataSpec(name, data_dir=str(tmp_path)))
    assert ds.inputs.shape == (7, 1, 28, 28)
    np.testing.assert_allclose(ds.inputs[:, 0].numpy(), images / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.targets.numpy(), labels)
    with pytest.raises(DataNotFoundError, match="t10k-images-idx3-ubyte"):
        load_dataset(DataSpec(name, data_dir=str(tmp_path), split="test"))


def test_missing_mnist_names_expected_path(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match=r"MNIST/raw/train-images-idx3-ubyte"):
        load_dataset(DataSpec("mnist", data_dir=str(tmp_path)))
    with pytest.raises(UsageError, match="--data-dir"):
        load_dataset(DataSpec("mnist"))


def _cifar_batch(path: Path, n: int, label_key: bytes, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"x", b"data": data, label_key: labels}, f, protocol=2)
    return data, labels


def test_cifar10_layout(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    parts = [_cifar_batch(folder / f"data_batch_{i}", 3, b"labels", i) for i in range(1, 6)]
    _cifar_batch(folder / "test_batch", 2, b"labels", 9)
    ds = load_dataset(DataSpec("cifar10", data_dir=str(tmp_path)))
    assert ds.inputs.shape == (15, 3, 32, 32) and ds.num_classes == 10
    first = parts[0][0][0].reshape(3, 32, 32) / 255.0
    expected = (first - np.array([0.4914, 0.4822, 0.4465])[:, None, None]) / np.array(
        [0.2470, 0.2435, 0.2616]
    )[:, None, None]
    np.testing.assert_allclose(ds.inputs[0].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert ds.targets.tolist() == functools.reduce(operator.iadd, (p[1] for p in parts), [])
    assert len(load_dataset(DataSpec("cifar10", data_dir=str(tmp_path), split="test"))) == 2


def test_cifar100_layout_and_missing(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="cifar-100-python/train"):
        load_dataset(DataSpec("cifar100", data_dir=str(tmp_path)))
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _cifar_batch(folder / "train", 4, b"fine_labels", 0)
    ds = load_dataset(DataSpec("cifar100", data_dir=str(tmp_path)))
    assert len(ds) == 4 and ds.num_classes == 100


class Payload:
    def __reduce__(self):
        return (print, ("never",))


def test_cifar_pickle_with_arbitrary_global_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": Payload(), b"labels": [1]}, f, protocol=2)
    with pytest.raises(DataError, match="not allowed"):
        load_dataset(DataSpec("cifar10", data_dir=str(tmp_path)))


def test_wikitext2_layout_vocabulary_and_next_token_targets(tmp_path) -> None:
    folder = tmp_path / "wikitext-2"
    folder.mkdir()
    (folder / "wiki.train.tokens").write_text(" = A = \n the cat sat on the mat \n")
    (folder / "wiki.test.tokens").write_text(" the dog sat \n")
    from mliscan.data import load_dataset
    from mliscan.spec import DataSpec

    train = load_dataset(DataSpec("wikitext2", data_dir=str(tmp_path), seq_len=3))
    # words in order of first appearance, <eos> after each line, <unk> appended
    vocab = ["=", "A", "<eos>", "the", "cat", "sat", "on", "mat", "<unk>"]
    ids = [0, 1, 0, 2, 3, 4, 5, 6, 3, 7, 2]
    assert train.num_classes == len(vocab)
    assert train.inputs.tolist() == [ids[0:3], ids[3:6], ids[6:9]]
    assert train.targets.tolist() == [ids[1:4], ids[4:7], ids[7:10]]
    test = load_dataset(DataSpec("wikitext2", data_dir=str(tmp_path), split="test", seq_len=2))
    assert test.inputs.tolist() == [[3, 8]] and test.targets.tolist() == [[8, 5]]  # dog -> <unk>
    with pytest.raises(DataNotFoundError, match=r"wiki\.train\.tokens"):
        load_dataset(DataSpec("wikitext2", data_dir=str(tmp_path / "nowhere")))


def test_tinytext_is_bundled() -> None:
    from mliscan.data import load_dataset
    from mliscan.spec import DataSpec

    ds = load_dataset(DataSpec("tinytext"))
    assert ds.inputs.shape[1] == 35 and ds.inputs.dtype == torch.int64 and len(ds) > 20
    assert torch.equal(ds.inputs[:, 1:], ds.targets[:, :-1])


def test_datasets_declare_themselves_in_one_registry() -> None:
    import pytest as _pytest

    from mliscan import data

    assert set(data.DATASETS) == set(data.REGISTRY)
    assert not data.has_test_split("digits") and data.has_test_split("mnist")
    assert data.REGISTRY["cifar10"].needs_dir and not data.REGISTRY["tinytext"].needs_dir
    with _pytest.raises(ValueError, match="registered twice"):
        data.register_dataset("digits", needs_dir=False, test_split=False, description="")(
            lambda *a: None
        )
