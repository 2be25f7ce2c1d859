"""``--launcher local|slurm``: a command's shards submitted as jobs through submitit.

The submitting process renders the command line it was given (without the launcher's own
options) and submits one job per shard with ``--shard K/N --launcher none`` added: as one
SLURM job array (the ``--slurm-*`` options become submitit's sbatch parameters), or as
processes on this machine (``local``). Each job runs that command as a subprocess
(:class:`ShardJob`), so submitit's signal handling stays in charge of the job: when SLURM
preempts it or its time limit nears, submitit calls :meth:`ShardJob.checkpoint`, which stops
the command (every finished unit is already in the store) and requeues the same shard, which
resumes with the units still missing. ``--detach`` returns once the job ids are printed;
otherwise the command waits and reports each shard. ``--retry-failed`` submits only the
shards with units left. ``OUT/shards/launch.json`` records each shard's job and log files,
and ``mliscan runs OUT`` shows them with the shards' own progress records.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mliscan.errors import UsageError
from mliscan.paths import atomic_write_json
from mliscan.shard import (
    LAUNCH_FILE,
    MAX_SHARDS,
    SHARDS_DIR,
    Shard,
    ShardSpec,
    read_status,
    status_file,
    unfinished,
)

# The options that say how to submit: left out of each shard's own command line.
LAUNCH_OPTIONS = frozenset(
    {
        "shard",
        "launcher",
        "shards",
        "slurm_partition",
        "slurm_gpus_per_task",
        "slurm_time",
        "slurm_array_parallelism",
        "detach",
    }
)
JOBS_DIR = "jobs"
# Local jobs have no time limit worth the name (submitit's own default is 2 minutes).
LOCAL_TIMEOUT_MIN = 60 * 24 * 365
# Seconds a stopped shard gets to finish its unit's write before it is killed.
STOP_GRACE_S = 60.0
# How often a job looks at its command.
POLL_CHILD_S = 0.2
# How often the waiting command asks the scheduler (SLURM) or the processes (local).
POLL_S = {"local": 0.5, "slurm": 30.0}


class ShardJob:
    """What one submitit job runs: ``mliscan ARGV`` (one shard) in a subprocess, in the
    folder the command was submitted from; and submitit's checkpointing hook."""

    def __init__(
        self, argv: Sequence[str], cwd: str, status: str, label: str, env: dict[str, str | None]
    ) -> None:
        self.argv = list(argv)
        self.cwd = cwd
        self.status = status
        """The shard's progress record (``shard.status_file``)."""
        self.label = label
        self.env = dict(env)
        """Variables set (or, for None, removed) in the command's environment."""
        self._child: subprocess.Popen[bytes] | None = None

    def __call__(self) -> str:
        env = dict(os.environ)
        for key, value in self.env.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        self._child = subprocess.Popen(
            [sys.executable, "-m", "mliscan.cli.app", *self.argv],
            cwd=self.cwd,
            env=env,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        try:
            # polled, not waited for: submitit's signal handler (checkpoint) must be able to
            # reap the command, and Popen.wait would hold the lock it needs meanwhile
            while (code := self._child.poll()) is None:
                time.sleep(POLL_CHILD_S)
        except BaseException:  # the job is ending (cancelled, requeued): so does the command
            _stop(self._child)
            raise
        self._child = None
        if code != 0:
            why = exit_reason(code)
            mark_failed(Path(self.status), why)
            raise RuntimeError(f"shard {self.label}: {why}")
        return f"shard {self.label} complete"

    def checkpoint(self) -> Any:
        """Called by submitit on preemption or near the time limit: stop the command (SIGTERM,
        which mliscan handles as Ctrl-C: nothing partial is kept) and requeue this shard."""
        from submitit.helpers import DelayedSubmission

        if self._child is not None:
            _stop(self._child)
        mark_failed(
            Path(self.status),
            "preempted or at its time limit: requeued, resumes with the units left",
            status="requeued",
            force=True,
        )
        return DelayedSubmission(ShardJob(self.argv, self.cwd, self.status, self.label, self.env))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_child": None}


def _stop(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM (mliscan stops as on Ctrl-C: nothing partial is kept), then SIGKILL; by the
    operating system's calls alone, since this runs inside a signal handler."""
    if child.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline:
        try:
            if os.waitpid(child.pid, os.WNOHANG) != (0, 0):
                return
        except ChildProcessError:  # reaped already
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, ChildProcessError):
        os.kill(child.pid, signal.SIGKILL)
        os.waitpid(child.pid, 0)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the command gets SIGTERM if the job's process dies first (SIGKILL, OOM)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def exit_reason(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory, or the node failed?)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    if code == 130:
        return "interrupted"
    return f"mliscan exited with code {code} (the job's log says why)"


def mark_failed(path: Path, error: str, status: str = "failed", force: bool = False) -> None:
    """Record a shard's end that its own process could not record (killed outright), or,
    with ``force``, any end seen from outside (requeued)."""
    record = read_status(path)
    if record is None:
        record = {"status": "running"}
    if record.get("status") != "running" and not force:
        return  # the shard said itself how it ended
    if record.get("status") == "complete":
        return
    record.update(status=status, error=error, updated=time.strftime("%Y-%m-%d %H:%M:%S"))
    with contextlib.suppress(OSError):
        atomic_write_json(path, record)


def render_argv(ctx: Any) -> list[str]:
    """The command line of ``ctx``'s command as the user gave it (options set on the
    command line only; the settings file is read again by each shard), without the
    launcher's options."""
    options: list[str] = []
    arguments: list[str] = []
    for param in ctx.command.params:
        name = param.name
        if name in LAUNCH_OPTIONS or name is None:
            continue
        source = ctx.get_parameter_source(name)
        if source is None or source.name in ("DEFAULT", "DEFAULT_MAP"):
            continue
        value = ctx.params.get(name)
        if param.param_type_name == "argument":
            if value is not None:
                values = value if isinstance(value, (list, tuple)) else [value]
                arguments += [_text(v) for v in values]
            continue
        if getattr(param, "is_flag", False) and isinstance(value, bool):
            if value:
                options.append(param.opts[0])
            elif param.secondary_opts:
                options.append(param.secondary_opts[0])
            continue
        if value is None:
            continue
        for v in value if getattr(param, "multiple", False) else [value]:
            options += [param.opts[0], _text(v)]
    return [ctx.info_name, *options, *(["--", *arguments] if arguments else [])]


def _text(value: Any) -> str:
    return str(getattr(value, "value", value))


def slurm_parameters(spec: ShardSpec, command: str) -> dict[str, Any]:
    """submitit's SlurmExecutor parameters (its sbatch options) for ``spec``."""
    params: dict[str, Any] = {"job_name": f"mliscan-{command}", "time": spec.minutes()}
    if spec.slurm_partition is not None:
        params["partition"] = spec.slurm_partition
    if spec.slurm_gpus_per_task is not None:
        params["gpus_per_task"] = spec.slurm_gpus_per_task
    if spec.slurm_array_parallelism is not None:
        params["array_parallelism"] = spec.slurm_array_parallelism
    return params


def make_executor(spec: ShardSpec, command: str, folder: Path) -> Any:
    try:
        import submitit
    except ImportError:
        raise UsageError(
            f"--launcher {spec.launcher} submits through submitit, which is not installed: "
            "pip install 'mliscan[slurm]'"
        ) from None
    if spec.launcher == "local":
        local = submitit.LocalExecutor(folder=folder)
        local.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN)
        return local
    try:
        executor = submitit.SlurmExecutor(folder=folder)
    except RuntimeError:  # submitit looks for srun
        raise UsageError(
            "--launcher slurm: no SLURM here (srun is not on PATH); submit from a node of the "
            "cluster, or use --launcher local"
        ) from None
    executor.update_parameters(**slurm_parameters(spec, command))
    return executor


def submit(
    spec: ShardSpec,
    command: str,
    out: Path,
    context: Any,
    units: int | None = None,
    pending: Sequence[int] | None = None,
) -> int:
    """Submit the shards of the command of ``context`` (its click context) and wait for
    them, or with ``--detach`` return once they are submitted. ``units``: how many units the
    study has, when known cheaply (the default number of shards); ``pending``: the shards
    with units left, when the command knows them better than the shards' records do."""
    from mliscan.cli import ui
    from mliscan.cli.errors import EXIT_GATE
    from mliscan.spec import SpecError

    count = spec.shards if spec.shards is not None else units
    if count is None:
        raise SpecError(
            "--shards",
            f"--launcher {spec.launcher} needs --shards N for {command} (how many "
            "jobs share the work)",
        )
    count = max(1, min(count, MAX_SHARDS))
    which = list(range(count))
    if spec.retry_failed:
        which = sorted(set(pending)) if pending is not None else unfinished(out, count)
        if not which:
            ui.err.print(
                f"{command}: every shard of {count} in {ui.escape(str(out))} is complete; "
                "nothing to resubmit"
            )
            return 0
    base = render_argv(context)
    folder = (out / SHARDS_DIR / JOBS_DIR).resolve()
    executor = make_executor(spec, command, folder)
    env: dict[str, str | None] = {}
    if spec.launcher == "local":  # submitit hides the GPUs of local jobs; they share ours
        env["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    jobs_of = []
    cwd = os.getcwd()
    for k in which:
        shard = Shard(k, count)
        argv = [*base[:1], "--shard", shard.label, "--launcher", "none", *base[1:]]
        status = str(status_file(out, shard).resolve())
        jobs_of.append((shard, ShardJob(argv, cwd, status, shard.label, env)))
    jobs = executor.submit_array([job for _, job in jobs_of])
    record = _launch_record(out, spec, command, count)
    for (shard, _), job in zip(jobs_of, jobs, strict=True):
        record["jobs"][shard.label] = {
            "job_id": str(job.job_id),
            "stdout": str(job.paths.stdout),
            "stderr": str(job.paths.stderr),
        }
    atomic_write_json(out / SHARDS_DIR / LAUNCH_FILE, record)
    where = "a SLURM job array" if spec.launcher == "slurm" else "local processes"
    ui.err.print(
        f"{command}: {len(jobs)} of {count} shards submitted as {where}"
        + (f" (--retry-failed: shards {', '.join(map(str, which))})" if spec.retry_failed else "")
    )
    for (shard, _), job in zip(jobs_of, jobs, strict=True):  # data: one shard a line
        print(f"{shard.label}\t{job.job_id}", flush=True)
    follow = [f"mliscan runs {out}", f"logs: {folder}/<job id>_0_log.err"]
    if spec.launcher == "slurm":
        array = str(jobs[0].job_id).split("_")[0]
        follow[1:1] = [f"squeue -j {array}", f"scancel {array} (to stop them)"]
    if spec.detach:
        ui.err.print("follow them with: " + "; ".join(follow), markup=False, highlight=False)
        return 0
    failed = _wait(jobs_of, jobs, POLL_S[spec.launcher], follow)
    if failed is None:
        return 130
    if failed:
        ui.err.print(
            f"{command}: {len(failed)} of {len(jobs)} shards failed ({', '.join(failed)}); the "
            "other shards and the store are intact: rerun with --retry-failed to submit only "
            "the shards with units left",
            markup=False,
        )
        return EXIT_GATE
    ui.err.print(
        f"{command}: all {count} shards complete in {ui.escape(str(out))} "
        f"(`mliscan runs {ui.escape(str(out))}` lists them)"
    )
    return 0


def _launch_record(out: Path, spec: ShardSpec, command: str, count: int) -> dict[str, Any]:
    """launch.json: the jobs of each shard, kept across --retry-failed submissions."""
    old = read_status(out / SHARDS_DIR / LAUNCH_FILE) or {}
    jobs = (
        old.get("jobs") if old.get("shards") == count and isinstance(old.get("jobs"), dict) else {}
    )
    return {
        "command": command,
        "launcher": spec.launcher,
        "shards": count,
        "submitted": time.strftime("%Y-%m-%d %H:%M:%S"),
        "jobs": jobs,
    }


def _wait(
    jobs_of: Sequence[tuple[Shard, ShardJob]], jobs: Sequence[Any], poll: float, follow: list[str]
) -> list[str] | None:
    """Report each shard as its job ends; the labels of the failed ones (None: Ctrl-C)."""
    from submitit.helpers import as_completed

    from mliscan.cli import ui
    from mliscan.cli.errors import InterruptState

    label = {id(job): shard.label for (shard, _), job in zip(jobs_of, jobs, strict=True)}
    status = {id(job): j.status for (_, j), job in zip(jobs_of, jobs, strict=True)}
    failed: list[str] = []
    try:
        for job in as_completed(list(jobs), poll_frequency=poll):
            try:
                job.result()
            except Exception as exc:  # the job's own error, or its end seen by submitit
                mark_failed(Path(status[id(job)]), f"job {job.job_id}: {_job_error(exc)}")
                record = read_status(Path(status[id(job)])) or {}
                why = str(record.get("error") or _job_error(exc))  # the shard's own word first
                failed.append(label[id(job)])
                ui.err.print(
                    f"shard {label[id(job)]} (job {job.job_id}) failed: {why}; log: "
                    f"{job.paths.stderr}",
                    markup=False,
                    highlight=False,
                )
            else:
                ui.err.print(f"shard {label[id(job)]} (job {job.job_id}) complete", markup=False)
    except KeyboardInterrupt:
        InterruptState.reported = True
        ui.err.print(
            "mliscan: stopped waiting; the jobs keep running. Follow them with: "
            + "; ".join(follow),
            markup=False,
            highlight=False,
        )
        return None
    return sorted(failed, key=lambda s: int(s.split("/")[0]))


def _job_error(exc: BaseException) -> str:
    """What ended a job, from submitit's error (which holds the job's traceback): the
    exception line the job raised, else submitit's own first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    raised = [line for line in lines if line.startswith("RuntimeError: ")]
    text = raised[-1].removeprefix("RuntimeError: ") if raised else (lines or [""])[0]
    text = text or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
