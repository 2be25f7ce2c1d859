"""Library exceptions mapped (issue 23, item 5).

A full disk (ENOSPC), a file-size limit (EFBIG), a read-only file system (EROFS) and a
refused permission (EACCES) reach mliscan wrapped in the libraries' own exceptions:
safetensors' SafetensorError ("... (os error 28)"), polars' ComputeError or an OSError
without errno, torch's RuntimeError ("strerror: ..."), transformers, timm and
huggingface_hub re-raising. Each is produced here by the real library call under the real
condition, in a subprocess (a file-size limit, a small or read-only tmpfs in a private mount
namespace, an unprivileged user), and ``cli.errors.report`` must answer exit 2 with the
OS's reason, never an internal error.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

CALLS = {
    "safetensors": "from safetensors.torch import save_file\n"
    "save_file({'w': torch.zeros(1 << 20)}, os.path.join(D, 'a.safetensors'))",
    "polars": "import polars as pl\n"
    "pl.DataFrame({'a': list(range(1 << 20))}).write_parquet(os.path.join(D, 'a.parquet'))",
    "transformers": "from transformers import BertConfig, BertForMaskedLM\n"
    "cfg = BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=1,\n"
    "                 intermediate_size=8, vocab_size=4000)\n"
    "BertForMaskedLM(cfg).save_pretrained(os.path.join(D, 'model'))",
    # safetensors: torch.save's own writer reports a short write without its reason
    # ("unexpected pos"), which no table can map; mliscan itself never calls torch.save
    "timm": "import timm, timm.models\n"
    "timm.models.save_for_hf(timm.create_model('resnet18', pretrained=False),\n"
    "                        os.path.join(D, 'timm'), safe_serialization=True)",
    "huggingface_hub": "from huggingface_hub import save_torch_state_dict\n"
    "os.makedirs(os.path.join(D, 'hub'), exist_ok=True)\n"
    "save_torch_state_dict({'w': torch.zeros(1 << 20)}, os.path.join(D, 'hub'))",
}
# what the one line says for each condition
FIXES = {
    "ENOSPC": "the disk is full",
    "EFBIG": "larger than allowed",
    "EROFS": "read-only",
    "EACCES": "permission denied",
}

SCRIPT = """
import os, resource, signal, sys
import torch
{imports}
from mliscan.cli.errors import report
D = {folder!r}
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
if {condition!r} == "EFBIG":
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
if {condition!r} == "EACCES" and os.getuid() == 0:
    os.setuid(65534)  # root ignores permissions: become nobody (after every import)
try:
{call}
except BaseException as exc:
    sys.exit(report(exc))
print("the call succeeded", file=sys.stderr)
sys.exit(99)
"""


def _imports(library: str) -> str:
    """The call's imports, run before dropping privileges (nobody cannot read the venv)."""
    return "\n".join(
        line for line in CALLS[library].splitlines() if line.startswith(("import", "from"))
    )


def _can_unshare() -> bool:
    if shutil.which("unshare") is None or sys.platform != "linux":
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return probe.returncode == 0


def _run(library: str, condition: str, folder: Path) -> subprocess.CompletedProcess[str]:
    body = "\n".join(
        line for line in CALLS[library].splitlines() if not line.startswith(("import", "from"))
    )
    script = SCRIPT.format(
        imports=_imports(library),
        folder=str(folder),
        condition=condition,
        call=textwrap.indent(body, "    "),
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    env.pop("MLISCAN_DEBUG", None)
    cmd = [sys.executable, "-c", script]
    if condition in ("ENOSPC", "EROFS"):
        options = "ro" if condition == "EROFS" else "size=256k"
        mount = f"mount -t tmpfs -o {options} tmpfs {folder}"
        cmd = ["unshare", "-m", "sh", "-c", f'{mount} && exec "$@"', "sh", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture
def folder() -> Path:
    # outside pytest's 0700 temporary root, so that an unprivileged user can reach it
    path = Path(tempfile.mkdtemp(prefix="mliscan-oserr-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    path.chmod(0o755)
    shutil.rmtree(path, ignore_errors=True)


# Importing transformers or timm costs a subprocess about 10 s: one condition each runs in
# make test, the others with the slow tests (CI runs them: pytest -m slow).
HEAVY = ("transformers", "timm")
CASES = [
    pytest.param(
        library,
        condition,
        id=f"{library}-{condition}",
        marks=pytest.mark.slow if library in HEAVY and condition != "EFBIG" else (),
    )
    for library in CALLS
    for condition in FIXES
]


@pytest.mark.parametrize(("library", "condition"), CASES)
def test_a_wrapped_os_refusal_is_exit_2_with_the_reason(
    library: str, condition: str, folder: Path
) -> None:
    if condition in ("ENOSPC", "EROFS") and not _can_unshare():
        pytest.skip("no private mount namespace here (unshare -m) for a small or read-only tmpfs")
    if condition == "EACCES" and os.getuid() != 0:
        folder.chmod(0o555)  # root drops to nobody instead (it ignores permissions)
    proc = _run(library, condition, folder)
    assert proc.returncode == 2, f"{library} {condition}: exit {proc.returncode}\n{proc.stderr}"
    lines = [line for line in proc.stderr.splitlines() if line.startswith("mliscan:")]
    assert len(lines) == 1, proc.stderr
    assert FIXES[condition] in lines[0] and "internal error" not in lines[0], lines[0]


def test_mliscan_train_under_a_file_size_limit_is_exit_2(tmp_path: Path) -> None:
    """The same through a command: safetensors refuses the weights file (EFBIG)."""
    import resource
    import signal

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))

    env = {k: v for k, v in os.environ.items() if k != "MLISCAN_DEBUG"}
    small = ["--epochs", "1", "--data-limit", "40", "--hidden", "64", "-q"]
    proc = subprocess.run(
        [sys.executable, "-m", "mliscan.cli.app", "train", "--out", str(tmp_path / "run"), *small],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        preexec_fn=limit,
    )
    assert proc.returncode == 2, proc.stderr
    assert "larger than allowed" in proc.stderr and "internal error" not in proc.stderr
    assert not (tmp_path / "run" / "final.safetensors").exists()
