"""MLITrainerCallback with the real Hugging Face Trainer on a tiny model, offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from mliscan.integrations.transformers import (  # noqa: E402
    INIT_IN_CHECKPOINT,
    MLIGateError,
    MLITrainerCallback,
    ShardedStrategyError,
    sharded_setup,
)
from tests import hubcache  # noqa: E402
from tests.conftest import run_cli  # noqa: E402


class Tokens(torch.utils.data.Dataset):
    """Random token sequences whose label is their first token's class (learnable)."""

    def __init__(self, n: int = 96, length: int = 8, vocab: int = 30, causal: bool = False):
        gen = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, vocab, (n, length), generator=gen)
        self.causal = causal

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        ids = self.ids[i]
        labels = ids.clone() if self.causal else int(ids[0]) % 3
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _classifier():
    config = transformers.BertConfig(
        vocab_size=30,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=3,
    )
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config)


def _trainer(model, data, out: Path, callbacks=None, processing_class=None, **kw):
    settings = {
        "output_dir": str(out),
        "num_train_epochs": 3,
        "per_device_train_batch_size": 16,
        "learning_rate": 5e-3,
        "report_to": [],
        "use_cpu": True,
        "save_strategy": "no",
        "logging_strategy": "no",
        "disable_tqdm": True,
        **kw,
    }
    args = transformers.TrainingArguments(**settings)
    return transformers.Trainer(
        model=model,
        args=args,
        train_dataset=data,
        callbacks=callbacks,
        processing_class=processing_class,
    )


class Integration(transformers.TrainerCallback):
    """Stands where report_to integrations stand (before the user's callbacks) and, like
    TensorBoard's, closes its writer at on_train_end."""

    def __init__(self) -> None:
        self.logs: list[dict] = []
        self.closed = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        assert not self.closed, "logged after the integration closed"
        self.logs.append(dict(logs or {}))

    def on_train_end(self, args, state, control, **kwargs):
        self.closed = True


def test_trainer_callback_measures_logs_and_writes(tmp_path: Path) -> None:
    model = _classifier()
    trainer = _trainer(model, Tokens(), tmp_path)
    cb = MLITrainerCallback.attach(trainer, max_examples=64, alphas=5)
    trainer.train()
    r = cb.result
    assert r is not None and r.distance > 0
    logged = [h for h in trainer.state.log_history if "mli/min_delta" in h]
    assert logged and logged[-1]["mli/barrier"] == pytest.approx(r.barrier)
    record = json.loads((tmp_path / "mli.json").read_text())
    assert record["data"]["examples"] == 64
    assert (tmp_path / "init.safetensors").is_file() and (tmp_path / "final.safetensors").is_file()


def test_causal_lm_and_the_gate(tmp_path: Path) -> None:
    config = transformers.GPT2Config(vocab_size=30, n_embd=16, n_layer=1, n_head=2, n_positions=16)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    trainer = _trainer(model, Tokens(causal=True), tmp_path)
    from mliscan.integrations.transformers import _sequence_loss

    # the negated loss rises wherever training lowered the loss: the gate must fail
    cb = MLITrainerCallback(
        max_examples=32, alphas=3, max_delta=0.0, loss=lambda out, y: -_sequence_loss(out, y)
    )
    trainer.add_callback(cb)
    with pytest.raises(MLIGateError, match="exceeds max_delta"):
        trainer.train()
    assert cb.result is not None and cb.result.min_delta > 0
    logged = [h for h in trainer.state.log_history if "mli/min_delta" in h]
    assert logged  # without attach(): recorded in the Trainer's log history


def test_registered_in_the_trainer_logs_through_its_integrations(tmp_path: Path) -> None:
    """Trainer(callbacks=[...]): the metrics reach every on_log listener (report_to
    integrations) before they close, exactly once."""
    spy = Integration()
    cb = MLITrainerCallback(max_examples=32, alphas=3)
    trainer = _trainer(_classifier(), Tokens(n=48), tmp_path, callbacks=[spy, cb])
    trainer.train()
    sent = [log for log in spy.logs if "mli/min_delta" in log]
    assert len(sent) == 1 and sent[0]["mli/barrier"] == pytest.approx(cb.result.barrier)
    assert [h for h in trainer.state.log_history if "mli/min_delta" in h]


class NoLabels(Tokens):
    def __getitem__(self, i: int) -> dict:
        row = super().__getitem__(i)
        del row["labels"]
        row["target"] = 0
        return row


def test_batches_checked_before_training(tmp_path: Path) -> None:
    cb = MLITrainerCallback(max_examples=32, alphas=3)
    trainer = _trainer(_classifier(), NoLabels(n=32), tmp_path, callbacks=[cb])
    trainer.compute_loss = lambda *a, **k: pytest.fail("trained before the batch check")
    # the Trainer's collator drops the column the model does not take ('target')
    with pytest.raises(
        TypeError,
        match=r"^MLITrainerCallback measures on batches with 'input_ids' and 'labels'.*has 'input_ids', 'attention_mask'$",
    ):
        trainer.train()


def _gpt2_and_tokens(tmp_path: Path):
    """A tiny GPT-2 with its tokenizer (tests/hubcache.py) and the bundled-style corpus cut
    into 16-token sequences: a causal LM the way a Trainer script has one."""
    tok_dir = tmp_path / "tok"
    hubcache.tokenizer(tok_dir)
    tok = transformers.AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    ids = tok(hubcache.CORPUS, add_special_tokens=False)["input_ids"][: 48 * 16]
    rows = torch.tensor(ids).view(48, 16)
    data = [{"input_ids": r, "labels": r.clone()} for r in rows]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(hubcache.tiny_config("gpt2"))
    (tmp_path / "corpus.txt").write_text(hubcache.CORPUS)
    return model, tok, data


def test_the_pair_is_gated_by_mliscan_check(tmp_path: Path, capsys) -> None:
    """The pair has save_pretrained's keys (no wrapper prefix, the tied head once), its
    config.json and the tokenizer beside it: `mliscan check` reads it (exit 0 or 1)."""
    from safetensors import safe_open

    model, tok, data = _gpt2_and_tokens(tmp_path)
    out = tmp_path / "out"
    cb = MLITrainerCallback(max_examples=32, alphas=3)
    _trainer(model, data, out, callbacks=[cb], processing_class=tok, num_train_epochs=2).train()
    keys = []
    for role in ("init", "final"):
        with safe_open(str(out / f"{role}.safetensors"), "pt") as f:
            keys.append(set(f.keys()))
    assert keys[0] == keys[1] and "transformer.wte.weight" in keys[0]
    assert "lm_head.weight" not in keys[0]  # tied to the embedding, saved once
    assert not any(k.startswith("model.") for k in keys[0])
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    capsys.readouterr()  # the Trainer's own log lines
    code, stdout, err = run_cli(
        [
            "check",
            out / "init.safetensors",
            out / "final.safetensors",
            "--data",
            "text",
            "--data-file",
            tmp_path / "corpus.txt",
            "--seq-len",
            16,
            "--alphas",
            3,
            "--max-barrier",
            "10",
            "--json",
            "-",
            "-q",
        ],
        capsys,
    )
    assert code in (0, 1), err
    record = json.loads(stdout)
    assert record["arch"] == "hf-causal-lm"  # read off the written config.json


def test_theta0_survives_a_resume(tmp_path: Path) -> None:
    """theta_0 travels in checkpoint-N/; train(resume_from_checkpoint=True) measures from
    the initialisation, not from the resumed weights."""
    from safetensors.torch import load_file

    model = _classifier()
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    out = tmp_path / "out"
    first = _trainer(
        model,
        Tokens(n=32),
        out,
        callbacks=[MLITrainerCallback(max_examples=16, alphas=3)],
        num_train_epochs=1,
        save_strategy="steps",
        save_steps=2,
    )
    first.train()
    saved = load_file(str(out / "checkpoint-2" / INIT_IN_CHECKPOINT))
    assert torch.equal(saved["classifier.weight"], theta0["classifier.weight"])

    torch.manual_seed(1)
    again = _classifier()  # other weights: the resume loads the checkpoint's
    cb = MLITrainerCallback(max_examples=16, alphas=3, out_dir=tmp_path / "mli")
    resumed = _trainer(again, Tokens(n=32), out, callbacks=[cb], num_train_epochs=2)
    resumed.train(resume_from_checkpoint=True)
    written = load_file(str(tmp_path / "mli" / "init.safetensors"))
    for k, v in written.items():
        assert torch.equal(v, theta0[k]), k
    assert cb.result.distance > 0

    # a checkpoint without theta_0: said aloud
    (out / "checkpoint-2" / INIT_IN_CHECKPOINT).unlink()
    later = _trainer(
        _classifier(), Tokens(n=32), out, callbacks=[MLITrainerCallback(max_examples=16)]
    )
    with pytest.warns(UserWarning, match="holds no mli-init.safetensors"):
        later.train(resume_from_checkpoint=True)


def test_sharded_setups_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    args = transformers.TrainingArguments(output_dir="unused", use_cpu=True, fsdp=True)
    assert sharded_setup(args) == "FSDP"
    plain = transformers.TrainingArguments(output_dir="unused", use_cpu=True)
    assert sharded_setup(plain) is None
    # `accelerate launch` with a ZeRO-3 config sets these for the Trainer it starts
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    assert sharded_setup(plain) == "DeepSpeed ZeRO stage 3"


FSDP_RUN = """
import torch, transformers
from mliscan.integrations.transformers import MLITrainerCallback
args = transformers.TrainingArguments(output_dir=OUT, use_cpu=True, fsdp=True, report_to=[])
config = transformers.GPT2Config(vocab_size=30, n_embd=16, n_layer=1, n_head=2, n_positions=16)
model = transformers.GPT2LMHeadModel(config)
rows = [{"input_ids": torch.ones(8, dtype=torch.long), "labels": torch.ones(8, dtype=torch.long)}]
transformers.Trainer(model=model, args=args, train_dataset=rows * 4,
                     callbacks=[MLITrainerCallback()])
print("constructed")
"""


def test_fsdp_refused_at_trainer_construction(tmp_path: Path) -> None:
    """A real distributed Trainer (one gloo process) with FSDP asked for: the callback
    refuses in one line when the Trainer is built, before any training."""
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(29500 + os.getpid() % 1000),
    }
    code = FSDP_RUN.replace("OUT", repr(str(tmp_path)))
    p = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert p.returncode != 0 and "constructed" not in p.stdout
    assert "ShardedStrategyError: MLITrainerCallback cannot run under FSDP" in p.stderr
    assert ShardedStrategyError.__name__ in p.stderr


DDP_RUN = """
import os, sys
from pathlib import Path
import torch, transformers
from mliscan.integrations.transformers import MLIGateError, MLITrainerCallback, _sequence_loss

out, rank = Path(sys.argv[1]), int(os.environ["RANK"])


class Marked(MLITrainerCallback):
    def _finish(self, args, state, model, processing_class):
        if state.is_world_process_zero and self._measured_step != state.global_step:
            (out / f"measured-{rank}").touch()
        return super()._finish(args, state, model, processing_class)


config = transformers.BertConfig(
    vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
    intermediate_size=32, max_position_embeddings=16, num_labels=3,
)
torch.manual_seed(0)
model = transformers.BertForSequenceClassification(config)
ids = torch.randint(1, 30, (32, 8), generator=torch.Generator().manual_seed(0))
rows = [{"input_ids": i, "labels": int(i[0]) % 3} for i in ids]
callback = Marked(max_examples=16, alphas=3, max_delta=0.0, loss=lambda o, y: -_sequence_loss(o, y))
args = transformers.TrainingArguments(
    output_dir=str(out / "run"), num_train_epochs=1, per_device_train_batch_size=8,
    use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True,
)
try:
    transformers.Trainer(model=model, args=args, train_dataset=rows, callbacks=[callback]).train()
except MLIGateError:
    (out / f"failed-{rank}").touch()
    raise
"""


def test_rank_zero_only_under_ddp_with_two_processes(tmp_path: Path) -> None:
    """torchrun, two CPU processes (gloo): process zero measures and writes the pair, and
    the gate's verdict fails both processes."""
    import subprocess
    import sys

    (tmp_path / "run.py").write_text(DDP_RUN)
    p = subprocess.run(
        [
            *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"),
            *("2", str(tmp_path / "run.py"), str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode != 0, p.stderr[-2000:]
    marks = sorted(f.name for f in tmp_path.iterdir() if f.name.startswith(("measured", "fail")))
    assert marks == ["failed-0", "failed-1", "measured-0"], p.stderr[-3000:]
    assert (tmp_path / "run" / "final.safetensors").is_file()
