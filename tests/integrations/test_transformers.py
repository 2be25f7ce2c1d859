"""MLITrainerCallback with the real Hugging Face Trainer on a tiny model, offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from mliscan.integrations.transformers import (  # noqa: E402
    MLIGateError,
    MLITrainerCallback,
)


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


def _trainer(model, data, out: Path, **kw):
    args = transformers.TrainingArguments(
        output_dir=str(out),
        num_train_epochs=3,
        per_device_train_batch_size=16,
        learning_rate=5e-3,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        **kw,
    )
    return transformers.Trainer(model=model, args=args, train_dataset=data)


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
