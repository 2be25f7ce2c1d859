"""Local text files -> token tensors for language models and text classifiers.

Files (``--data text --data-file FILE``):

* ``.txt``: one corpus;
* ``.jsonl``: one JSON object per line with a ``text`` field (and ``label`` for classifiers);
* ``.csv``: a header row with a ``text`` column (and ``label``).

Objectives (the adapter names one through :class:`~mliscan.adapter.DataHooks`):

* ``causal``: the documents' tokens joined by the end-of-sequence token, the first
  ``max_tokens`` kept and cut into rows of ``seq_len`` (a short tail is dropped unless it is
  all there is). Inputs and targets are the same ids; the adapter shifts them.
* ``masked``: rows of ``seq_len`` framed as BERT/RoBERTa frame them (the class/begin token
  first, the separator/end token last, when the tokenizer has them); in every row the same
  number of positions (15% of its ordinary tokens, at least one) is chosen with a fixed seed
  and replaced by the mask token. Targets hold the original id there and -100 elsewhere.
* ``classification``: one row per document, truncated/padded to ``seq_len``; inputs are
  [N, 2, seq_len] (ids and attention mask); labels are integers, or names mapped through the
  model's ``label2id`` (else sorted).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch

from mliscan.errors import DataError, DataNotFoundError, UsageError
from mliscan.paths import parse_json
from mliscan.spec import DEFAULT_SEQ_LEN, MLM_PROBABILITY, MLM_SEED, DataSpec

MAX_TEXT_BYTES = 1 << 30


def read_documents(path: Path) -> tuple[list[str], list[Any] | None]:
    """(texts, labels or None) from a .txt, .jsonl or .csv file."""
    if not path.is_file():
        raise DataNotFoundError(f"{path}: no such file; pass --data-file FILE (.txt, .jsonl, .csv)")
    if path.stat().st_size > MAX_TEXT_BYTES:
        raise DataError(f"{path}: larger than 1 GiB; pass a smaller sample of the corpus")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        texts, labels = [], []
        for i, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = parse_json(line)
            except json.JSONDecodeError as exc:  # also beyond the nesting bound
                raise DataError(f"{path}:{i}: not JSON ({exc.msg})") from exc
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise DataError(f"{path}:{i}: needs an object with a 'text' string")
            texts.append(obj["text"])
            labels.append(obj.get("label"))
        return texts, (labels if all(v is not None for v in labels) else None)
    if suffix == ".csv":
        try:
            rows = list(csv.DictReader(raw.splitlines()))
        except csv.Error as exc:
            raise DataError(f"{path}: not a readable CSV file ({exc})") from exc
        if not rows or "text" not in rows[0]:
            raise DataError(f"{path}: needs a header row with a 'text' column (and 'label')")
        texts = [r["text"] or "" for r in rows]
        return texts, ([r["label"] for r in rows] if "label" in rows[0] else None)
    return [raw], None


def load_text(spec: DataSpec, hooks: Any) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(inputs, targets, num_classes) for the objective ``hooks.objective``."""
    if spec.data_file is None:
        raise UsageError("--data text reads a local file: pass --data-file FILE")
    if hooks is None or hooks.tokenizer is None or not hooks.objective:
        raise UsageError(
            "--data text needs a model with a tokenizer (an hf-* architecture); "
            "for word-level corpora use --data wikitext2"
        )
    seq_len = spec.seq_len
    if seq_len is None:
        seq_len = min(DEFAULT_SEQ_LEN, hooks.max_length or DEFAULT_SEQ_LEN)
    elif hooks.max_length is not None and seq_len > hooks.max_length:
        raise UsageError(
            f"--seq-len {seq_len} exceeds the model's context of {hooks.max_length} tokens; "
            f"pass --seq-len {hooks.max_length} or less"
        )
    if seq_len < 2:
        raise UsageError(f"--seq-len must be at least 2 (got {seq_len})")
    path = Path(spec.data_file).expanduser()
    texts, labels = read_documents(path)
    tok = hooks.tokenizer
    if hooks.objective == "classification":
        return _classification(path, texts, labels, tok, seq_len, hooks.label_names)
    ids: list[int] = []
    eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
    budget = spec.max_tokens if spec.max_tokens is not None else float("inf")
    for text in texts:
        if len(ids) >= budget:
            break
        ids.extend(tok(text, add_special_tokens=False)["input_ids"])
        if eos is not None and len(texts) > 1:
            ids.append(eos)
    if spec.max_tokens is not None:
        ids = ids[: spec.max_tokens]
    vocab = len(tok)
    if hooks.objective == "masked":
        x, y = _masked_rows(ids, seq_len, tok, path)
    else:
        x = _rows(ids, seq_len, path)
        y = x.clone()
    return x, y, vocab


def _rows(ids: list[int], length: int, path: Path) -> torch.Tensor:
    if len(ids) < 2:
        raise DataError(f"{path}: fewer than 2 tokens; a language-model loss needs more text")
    n = len(ids) // length
    if n == 0:
        return torch.tensor([ids], dtype=torch.int64)
    return torch.tensor(ids[: n * length], dtype=torch.int64).view(n, length)


def _masked_rows(
    ids: list[int], length: int, tok: Any, path: Path
) -> tuple[torch.Tensor, torch.Tensor]:
    if tok.mask_token_id is None:
        raise DataError("the model's tokenizer has no mask token; it is not a masked LM")
    first = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
    last = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
    head = [first] if first is not None else []
    tail = [last] if last is not None else []
    body = length - len(head) - len(tail)
    if body < 1:
        raise UsageError(f"--seq-len {length} leaves no room beside the special tokens")
    rows = _rows(ids, body, path)
    x = torch.tensor([head + r.tolist() + tail for r in rows], dtype=torch.int64)
    special = torch.zeros_like(x, dtype=torch.bool)
    special[:, : len(head)] = True
    if tail:
        special[:, -len(tail) :] = True
    gen = torch.Generator().manual_seed(MLM_SEED)
    k = max(1, round(MLM_PROBABILITY * rows.shape[1]))
    y = torch.full_like(x, -100)
    for i in range(x.shape[0]):
        candidates = (~special[i]).nonzero().flatten()
        chosen = candidates[torch.randperm(len(candidates), generator=gen)[:k]]
        y[i, chosen] = x[i, chosen]
        x[i, chosen] = tok.mask_token_id
    return x, y


def _classification(
    path: Path,
    texts: list[str],
    labels: list[Any] | None,
    tok: Any,
    seq_len: int,
    label_names: dict[str, int] | None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    if labels is None:
        raise DataError(f"{path}: every example needs a 'label' for a sequence classifier")
    ids = _label_ids(path, labels, label_names)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    enc = tok(texts, truncation=True, max_length=seq_len, padding=False)
    x = torch.full((len(texts), 2, seq_len), pad, dtype=torch.int64)
    x[:, 1] = 0
    for i, row in enumerate(enc["input_ids"]):
        x[i, 0, : len(row)] = torch.tensor(row, dtype=torch.int64)
        x[i, 1, : len(row)] = 1
    classes = max(ids) + 1 if not label_names else max(label_names.values()) + 1
    return x, torch.tensor(ids, dtype=torch.int64), classes


def _label_ids(path: Path, labels: list[Any], names: dict[str, int] | None) -> list[int]:
    out = []
    known = names or {}
    as_text = [str(v) for v in labels]
    if not known and not all(t.lstrip("-").isdigit() for t in as_text):
        known = {t: i for i, t in enumerate(sorted(set(as_text)))}
    for t in as_text:
        if t in known:
            out.append(known[t])
        elif t.lstrip("-").isdigit():
            out.append(int(t))
        else:
            raise DataError(
                f"{path}: label {t!r} is not one of the model's labels ({', '.join(known)})"
            )
    if any(v < 0 for v in out):
        raise DataError(f"{path}: labels must be non-negative")
    return out


# ---- word-level corpora in WikiText-2's layout ---------------------------------------------
WIKITEXT_FILES = {"train": "wiki.train.tokens", "test": "wiki.test.tokens"}
WORD_SEQ_LEN = 35  # the usual truncated-BPTT length of word-level LSTM/Transformer LMs
BUNDLED_TINYTEXT = Path(__file__).resolve().parent / "bundled" / "tinytext"


def load_wikitext(
    folder: Path, split: str, seq_len: int | None, name: str
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """WikiText-2's ``wiki.{train,test}.tokens``: whitespace tokens, ``<eos>`` after every
    line (as PyTorch's word_language_model does); the vocabulary is the training file's, in
    order of first appearance, so ids agree between splits. Rows of ``seq_len`` inputs with
    the next token of each as targets: [N, L] and [N, L]."""
    train = folder / WIKITEXT_FILES["train"]
    target_file = folder / WIKITEXT_FILES[split]
    for f in (train, target_file):
        if not f.is_file():
            raise DataNotFoundError(
                f"{name}: missing {f}; place WikiText-2's files (wiki.train.tokens, "
                "wiki.test.tokens) there (nothing is downloaded)"
            )
    vocab: dict[str, int] = {}
    for word in _words(train):
        vocab.setdefault(word, len(vocab))
    vocab.setdefault("<unk>", len(vocab))
    unk = vocab["<unk>"]
    ids = torch.tensor([vocab.get(w, unk) for w in _words(target_file)], dtype=torch.int64)
    length = seq_len or WORD_SEQ_LEN
    if length < 1:
        raise UsageError(f"--seq-len must be at least 1 (got {length})")
    n = (len(ids) - 1) // length
    if n < 1:
        raise DataError(f"{target_file}: fewer than {length + 1} tokens")
    x = ids[: n * length].view(n, length)
    y = ids[1 : n * length + 1].view(n, length)
    return x.contiguous(), y.contiguous(), len(vocab)


def _words(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text") from exc
    out: list[str] = []
    for line in text.splitlines():
        out.extend(line.split())
        out.append("<eos>")
    return out
