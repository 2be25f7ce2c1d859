"""``mliscan env``: the versions and machine a bug report needs."""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from typing import Annotated, Any

import typer

# The distributions whose versions change what mliscan computes or how it reads files.
PACKAGES = (
    "torch",
    "torchvision",
    "numpy",
    "safetensors",
    "polars",
    "huggingface-hub",
    "transformers",
    "timm",
    "scikit-learn",
    "matplotlib",
    "typer",
    "rich",
    "lightning",
    "pytorch-lightning",
    "accelerate",
    "submitit",
)


def environment() -> dict[str, Any]:
    """mliscan's version, Python, the platform, each package's version (None when not
    installed), torch's threads and accelerators, and the MLISCAN_* variables set."""
    from mliscan import __version__

    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    info: dict[str, Any] = {
        "mliscan": __version__,
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "packages": versions,
    }
    info.update(_torch())
    if "torch_build" in info:  # torch's own word: its CUDA or CPU build (2.4.1+cu121)
        versions["torch"] = info.pop("torch_build")
    info["environment"] = {k: v for k, v in sorted(os.environ.items()) if k.startswith("MLISCAN_")}
    return info


def _torch() -> dict[str, Any]:
    """torch's threads and accelerators (nothing when torch cannot be imported)."""
    try:
        import torch
    except Exception as exc:  # a broken torch is itself the report
        return {"torch_error": f"{type(exc).__name__}: {exc}"}
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None)
    return {
        "torch_build": str(torch.__version__),
        "torch_threads": torch.get_num_threads(),
        "cuda": {
            "available": cuda,
            "version": torch.version.cuda,
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if cuda
            else [],
        },
        "mps": bool(mps is not None and mps.is_available()),
    }


def env(
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the same as one JSON object.")
    ] = False,
) -> int:
    """Print the versions and machine details to paste into a bug report.

    Examples:

      mliscan env

      mliscan env --json > env.json
    """
    info = environment()
    if json_out:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
        return 0
    lines = [f"mliscan {info['mliscan']}", f"python {info['python']}"]
    lines += [f"platform {info['platform']} ({info['cpus']} CPUs)"]
    for name, version in info["packages"].items():
        lines.append(f"{name} {version or '-'}")
    if "torch_error" in info:
        lines.append(f"torch: cannot be imported ({info['torch_error']})")
    else:
        cuda = info["cuda"]
        devices = ", ".join(cuda["devices"]) or "none"
        lines.append(f"torch threads {info['torch_threads']}")
        lines.append(f"cuda {cuda['version'] or '-'} (available: {cuda['available']}; {devices})")
        lines.append(f"mps available: {info['mps']}")
    lines += [f"{k}={v}" for k, v in info["environment"].items()]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
