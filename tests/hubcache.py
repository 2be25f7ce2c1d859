"""Tiny Hugging Face models and a hand-built, offline Hugging Face cache for the hub tests.

The cache has the layout huggingface_hub reads (``models--ORG--NAME/refs/REV`` holding a
commit hash, ``snapshots/COMMIT/FILE``), so the real resolver runs against it with
``HF_HUB_OFFLINE=1`` and no network.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import torch

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "and",
    "the",
    "dog",
    "ran",
    "to",
    "the",
    "park",
    "while",
    "birds",
    "sang",
    "in",
    "tall",
    "green",
    "trees",
    "under",
    "blue",
    "sky",
    "near",
    "quiet",
    "river",
    "where",
    "fish",
    "swim",
    "slowly",
    "past",
    "old",
    "stones",
]
CORPUS = " ".join(WORDS[i % len(WORDS)] for i in range(7 * 600)) + "\n"


def tokenizer(folder: Path) -> None:
    """A word-level tokenizer saved in transformers' format (tokenizer.json + config)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]", "<eos>"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        eos_token="<eos>",
    )
    fast.save_pretrained(str(folder))


VOCAB = 6 + len(set(WORDS))


def tiny_config(kind: str):
    from transformers import BertConfig, GPT2Config, GPTNeoXConfig, LlamaConfig

    if kind == "gpt2":
        return GPT2Config(
            vocab_size=VOCAB,
            n_positions=64,
            n_embd=32,
            n_layer=2,
            n_head=2,
            architectures=["GPT2LMHeadModel"],
            eos_token_id=5,
            bos_token_id=5,
        )
    if kind == "neox":
        return GPTNeoXConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            architectures=["GPTNeoXForCausalLM"],
        )
    if kind == "pythia":  # the shape of Pythia-14m (parallel residual, 1/4 rotary), tiny vocab
        return GPTNeoXConfig(
            vocab_size=VOCAB,
            hidden_size=128,
            num_hidden_layers=6,
            num_attention_heads=4,
            intermediate_size=512,
            rotary_pct=0.25,
            use_parallel_residual=True,
            max_position_embeddings=2048,
            architectures=["GPTNeoXForCausalLM"],
        )
    if kind == "llama":
        return LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=64,
            max_position_embeddings=64,
            architectures=["LlamaForCausalLM"],
        )
    if kind in ("bert", "bert-cls"):
        arch = "BertForMaskedLM" if kind == "bert" else "BertForSequenceClassification"
        return BertConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            architectures=[arch],
            num_labels=2,
            id2label={0: "neg", 1: "pos"},
            label2id={"neg": 0, "pos": 1},
        )
    raise ValueError(kind)


def hf_model_files(kind: str, seed: int, steps: int = 0, parent: Path | None = None) -> Path:
    """A folder with a tiny transformers model (seeded init, then ``steps`` noisy updates
    standing in for training), its config and tokenizer."""
    import transformers

    config = tiny_config(kind)
    auto = {
        "gpt2": "AutoModelForCausalLM",
        "neox": "AutoModelForCausalLM",
        "pythia": "AutoModelForCausalLM",
        "llama": "AutoModelForCausalLM",
        "bert": "AutoModelForMaskedLM",
        "bert-cls": "AutoModelForSequenceClassification",
    }[kind]
    torch.manual_seed(seed)
    model = getattr(transformers, auto).from_config(config)
    with torch.no_grad():
        for _ in range(steps):
            for p in model.parameters():
                p.mul_(0.9).add_(0.05 * torch.randn_like(p))
    folder = Path(tempfile.mkdtemp(prefix="hfmodel-", dir=parent))
    model.save_pretrained(str(folder))
    tokenizer(folder)
    return folder


def timm_model_files(
    seed: int, steps: int = 0, name: str = "test_resnet.r160_in1k", parent: Path | None = None
) -> Path:
    """A timm folder as the Hub holds it: model.safetensors and config.json."""
    import json

    import timm
    from safetensors.torch import save_file

    arch = name.split(".")[0]
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=3)
    with torch.no_grad():
        for _ in range(steps):
            for p in model.parameters():
                p.mul_(0.9).add_(0.05 * torch.randn_like(p))
    folder = Path(tempfile.mkdtemp(prefix="timmmodel-", dir=parent))
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors"
    )
    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    cfg["input_size"] = [3, 32, 32]
    cfg["num_classes"] = 3
    config = {
        "architecture": arch,
        "num_classes": 3,
        "num_features": model.num_features,
        "pretrained_cfg": cfg,
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def add_revision(cache: Path, repo: str, revisions: list[str], files: Path) -> str:
    """Put a folder's files into ``cache`` as one commit of ``repo``, named by ``revisions``."""
    digest = hashlib.sha1()
    for f in sorted(files.iterdir()):
        digest.update(f.name.encode() + f.read_bytes())
    commit = digest.hexdigest()
    root = cache / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    (root / "blobs").mkdir(exist_ok=True)
    for f in sorted(files.iterdir()):
        blob = root / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, blob)
        target = snap / f.name
        if not target.exists():
            target.symlink_to(Path("..") / ".." / "blobs" / blob.name)
    (root / "refs").mkdir(exist_ok=True)
    for rev in revisions:
        (root / "refs" / rev).write_text(commit)
    return commit
