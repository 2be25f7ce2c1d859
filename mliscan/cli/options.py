"""``train``'s options that are shared with the evaluation commands, taken from the spec
fields (so they are spelled, documented and checked once; see ``mliscan.cli.spine``)."""

from __future__ import annotations

from typing import Annotated

import typer

from mliscan import spec as S
from mliscan.cli import spine

Hidden = spine.annotated(S.ArchSpec, "hidden")
BN = spine.annotated(S.ArchSpec, "bn")
ArchOpt = spine.annotated(S.ArchSpec, "arch_opt")
DataDir = spine.annotated(S.DataSpec, "data_dir")
DataLimit = spine.annotated(S.DataSpec, "limit")
SeqLen = spine.annotated(S.DataSpec, "seq_len")
Device = spine.annotated(S.EvalSpec, "device")
Quiet = spine.annotated(spine.OutputSpec, "quiet")
Seed = Annotated[int, typer.Option(help="Random seed.", metavar="N")]
