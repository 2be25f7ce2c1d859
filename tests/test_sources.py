"""Sources -> local paths: the Hugging Face cache read through huggingface_hub, offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mliscan.errors import HubError
from mliscan.sources import cached_revisions, resolve
from tests import hubcache


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache holding org/x at two commits: step0, and main with the tag v1 beside it."""
    root = tmp_path / "hub"
    for revisions, value in ((["step0"], 0), (["main", "v1"], 1)):
        files = tmp_path / f"files{value}"
        files.mkdir()
        (files / "config.json").write_text(json.dumps({"value": value}))
        hubcache.add_revision(root, "org/x", revisions, files)
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return root


def test_cached_revisions_are_the_refs_huggingface_hub_reads(cache: Path) -> None:
    assert cached_revisions("org/x") == ["main", "step0", "v1"]
    assert cached_revisions("org/absent") == []


def test_no_cache_folder_holds_no_revisions(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "never-created"))
    assert cached_revisions("org/x") == []


def test_offline_resolution_pins_the_commit(cache: Path) -> None:
    resolved = resolve("hf:org/x@v1")
    assert resolved.kind == "hf" and resolved.files == ["config.json"]
    assert resolved.commit == resolved.path.name
    assert json.loads((resolved.path / "config.json").read_text()) == {"value": 1}


def test_offline_misses_name_the_cache(cache: Path) -> None:
    with pytest.raises(HubError) as info:
        resolve("hf:org/x@nope")
    assert str(info.value) == (
        f"hf:org/x@nope: revision 'nope' is not in the local Hugging Face cache "
        f"({cache / 'models--org--x'}); check the name, or fetch it once with network access"
    )
    with pytest.raises(HubError, match=r"not in the local Hugging Face cache \(.*\) and offline"):
        resolve("hf:org/absent")


def test_a_repository_huggingface_hub_reads_as_inconsistent_counts_as_not_cached(
    cache: Path,
) -> None:
    (cache / "models--org--x" / "refs" / "step9").write_text("0" * 40)  # never downloaded
    assert cached_revisions("org/x") == []
    with pytest.raises(HubError, match=r"not in the local Hugging Face cache .* offline mode"):
        resolve("hf:org/x@step9")
