"""``train``'s options that are shared with the evaluation commands, taken from the spec
fields (so they are spelled, documented and checked once; see ``mliscan.cli.spine``)."""

from __future__ import annotations

from typing import Annotated

import typer

from mliscan import spec as S
from mliscan.cli import spine
from mliscan.registry import arch_spec
from mliscan.shard import ShardSpec

# training builds the architecture: its defaults, not what inspection reads off a checkpoint
Hidden = spine.annotated(arch_spec(), "hidden", show_default="the architecture's: 128,128 for mlp")
BN = spine.annotated(
    arch_spec(),
    "bn",
    help="Build the batch-norm variant (mlp, resnet*); --bn on,off sweeps both.",
    show_default="off",
)
ArchOpt = spine.annotated(S.ArchSpec, "arch_opt")
DataDir = spine.annotated(S.DataSpec, "data_dir")
DataLimit = spine.annotated(S.DataSpec, "limit")
SeqLen = spine.annotated(S.DataSpec, "seq_len")
Device = spine.annotated(S.EvalSpec, "device")
Quiet = spine.annotated(spine.OutputSpec, "quiet")
Seed = Annotated[int, typer.Option(help="Random seed.", metavar="N")]
# sharding and launchers (mliscan.shard.ShardSpec)
Shard = spine.annotated(ShardSpec, "shard")
Launcher = spine.annotated(ShardSpec, "launcher")
Shards = spine.annotated(ShardSpec, "shards")
SlurmPartition = spine.annotated(ShardSpec, "slurm_partition")
SlurmGpusPerTask = spine.annotated(ShardSpec, "slurm_gpus_per_task")
SlurmTime = spine.annotated(ShardSpec, "slurm_time")
SlurmArrayParallelism = spine.annotated(ShardSpec, "slurm_array_parallelism")
Detach = spine.annotated(ShardSpec, "detach")
