"""Your own model: --model module:factory imports leave the process as they found it."""

from __future__ import annotations

import sys
from pathlib import Path

from mliscan.adapter import DataInfo
from mliscan.custom import FactoryAdapter


def test_a_factory_is_imported_without_changing_sys_path(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "helpers_for_factory.py").write_text("WIDTH = 7\n")
    (tmp_path / "lazy_factory_mod.py").write_text(
        "import torch\n"
        "def make():\n"
        "    import helpers_for_factory  # a sibling imported only when called\n"
        "    return torch.nn.Linear(3, helpers_for_factory.WIDTH)\n"
    )
    monkeypatch.chdir(tmp_path)
    before = list(sys.path)
    try:
        adapter = FactoryAdapter("lazy_factory_mod:make", {})
        assert sys.path == before
        module = adapter.build(adapter.parse_options({}), DataInfo((3,), 7))
        assert module.out_features == 7
        assert sys.path == before
    finally:
        for name in ("lazy_factory_mod", "helpers_for_factory"):
            sys.modules.pop(name, None)
