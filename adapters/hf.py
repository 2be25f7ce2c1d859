"""Hugging Face transformers models: causal LMs, masked LMs and sequence classifiers.

The architecture comes from the checkpoint folder's ``config.json`` (its ``architectures``
field), so ``--arch`` is rarely needed; the module is ``AutoModelFor*.from_config`` (never
remote code). The module is wrapped so that it returns the logits tensor; checkpoint names
gain a ``model.`` prefix on the way in and lose it on the way out.

Objectives (per example = per sequence; every sequence has the same number of scored tokens,
so the mean over examples is the mean over tokens):

* ``hf-causal-lm``: next-token cross-entropy over the sequence;
* ``hf-masked-lm``: cross-entropy at the masked positions, chosen once with a fixed seed by
  the data layer (the same masks at every alpha; the token is always replaced by the mask
  token, no 80/10/10 randomness, so the loss is a deterministic function of the weights);
* ``hf-sequence-classification``: cross-entropy of the label.

Gauss length: the logits at ``GAUSS_POSITIONS`` (4) evenly spaced token positions of each
sequence, each position one logit vector (classification: the sequence's logits).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from mliscan.adapters.hf_rules import rule_for
from torch import nn

from mliscan.adapter import (
    Adapter,
    DataHooks,
    DataInfo,
    gauss_positions,
    option,
    sequence_logits,
)
from mliscan.errors import AdapterOptionError, DataError

PREFIX = "model."
# Token positions per sequence (evenly spaced, first and last included) whose logit vectors
# enter the Gauss length of a language model.
# Causal LMs compute their logits only at those positions during the Gauss pass (exactly the
# same numbers, far less memory); a switch for the test that proves the equality.
SPARSE_GAUSS_LOGITS = True
# Buffers that older transformers versions saved and newer ones recreate (causal masks,
# rotary tables): dropped on load, never interpolated.
_STALE_BUFFERS = re.compile(
    r"(^|\.)(attn\.bias|attn\.masked_bias|attention\.bias|attention\.masked_bias|"
    r"rotary_emb\.inv_freq)$"
)


def _parse_config(value: Any) -> str:
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    text = str(value)
    if text:
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"config is not JSON ({exc.msg})") from exc
        if not isinstance(parsed, dict):
            raise ValueError("config must be a JSON object")
    return text


@dataclass(frozen=True)
class HFOptions:
    config: str = option(
        "", "the model's config.json (read from the checkpoint folder)", _parse_config
    )
    attn: str = option("sdpa", "attention implementation: sdpa or eager")


class HFWrapper(nn.Module):
    """Calls the transformers model and returns its logits tensor."""

    def __init__(self, model: nn.Module, paired_inputs: bool) -> None:
        super().__init__()
        self.model = model
        self.paired_inputs = paired_inputs
        self.gauss_only = False
        """Inside the Gauss-length pass: a causal LM computes logits only at the
        GAUSS_POSITIONS positions the Gauss length reads (``logits_to_keep``)."""
        params = inspect.signature(model.forward).parameters
        self._can_keep = SPARSE_GAUSS_LOGITS and not paired_inputs and "logits_to_keep" in params
        # no key/value cache (evaluation only); encoders (BERT) take no such argument
        self._no_cache = {"use_cache": False} if "use_cache" in params else {}

    @contextlib.contextmanager
    def forward_ad_context(self) -> Iterator[None]:
        """During forward-mode AD: eager attention (fused SDPA kernels lack forward AD), and
        logits only at the positions the Gauss length uses (the output head over every
        position would dominate the memory of the derivative pass)."""
        model: Any = self.model  # a transformers PreTrainedModel
        before = model.config._attn_implementation
        if before != "eager":
            model.set_attn_implementation("eager")
        self.gauss_only = self._can_keep
        try:
            yield
        finally:
            self.gauss_only = False
            if before != "eager":
                model.set_attn_implementation(before)

    @property
    def taylor_positions(self) -> bool:
        """Whether second-order rules cover this model (its Gauss logits only; a sequence
        classifier's logits are one vector per sequence)."""
        return rule_for(self.model) is not None

    taylor_complete = taylor_positions  # the rules cover every submodule

    def taylor_forward(self, t: Any, st: Any) -> Any:
        rule = rule_for(self.model)
        if rule is None:
            raise TypeError(f"no second-order rule for {type(self.model).__name__}")
        return t.stack(rule(t, self.model, st[0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.paired_inputs:  # [N, 2, L]: token ids and attention mask
            out = self.model(input_ids=x[:, 0], attention_mask=x[:, 1], **self._no_cache)
        elif self.gauss_only:
            keep = gauss_positions(x.shape[1], x.device)
            out = self.model(input_ids=x, logits_to_keep=keep, **self._no_cache)
        else:
            out = self.model(input_ids=x, **self._no_cache)
        logits = getattr(out, "logits", None)
        if logits is None:  # *ForPreTraining heads
            logits = out.prediction_logits
        return logits


class _HFAdapter(Adapter):
    custom_logits = True  # the Gauss logits are a subset of the output
    Options = HFOptions
    default_data = "text"
    trainable = False
    objective: ClassVar[str] = ""
    suffixes: ClassVar[tuple[str, ...]] = ()
    auto_class: ClassVar[str] = ""
    # the output budget (resources.OUTPUT_BYTES_BUDGET) caps these for large vocabularies
    eval_batch_candidates: ClassVar[tuple[int, ...]] = (1, 4, 16, 64)

    example_config: ClassVar[dict[str, Any]] = {}

    def example(self) -> tuple[dict[str, Any], DataInfo]:
        return {"config": json.dumps(self.example_config)}, DataInfo((12,), 40)

    def example_batch(self, info: DataInfo, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.randint(4, info.num_classes, (n, *info.input_shape))
        if self.objective == "masked":
            target = torch.full_like(ids, -100)
            target[:, 3] = ids[:, 3]
            ids = ids.clone()
            ids[:, 3] = 3  # the example configs' mask token
            return ids, target
        if self.objective == "classification":
            pair = torch.stack([ids, torch.ones_like(ids)], dim=1)
            return pair, torch.randint(0, 3, (n,))
        return ids, ids.clone()

    def claims_config(self, config: Mapping[str, Any]) -> bool:
        archs = config.get("architectures") or []
        return any(str(a).endswith(self.suffixes) for a in archs)

    def options_from_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return {"config": json.dumps(dict(config), sort_keys=True)}

    def validate_options(self, options: HFOptions) -> None:
        if options.attn not in ("sdpa", "eager"):
            raise AdapterOptionError(f"--arch {self.name}: attn must be sdpa or eager")

    def hf_config(self, options: HFOptions) -> Any:
        if not options.config:
            raise AdapterOptionError(
                f"--arch {self.name} needs the model's config.json beside the weights "
                "(a transformers folder or an hf: source)"
            )
        from transformers import CONFIG_MAPPING

        config = json.loads(options.config)
        model_type = config.get("model_type")
        if model_type not in CONFIG_MAPPING:
            raise AdapterOptionError(
                f"--arch {self.name}: config model_type {model_type!r} is unknown to this "
                "transformers version"
            )
        return CONFIG_MAPPING[model_type].from_dict(config)

    def auto_class_for(self, config: Any) -> str:
        return self.auto_class

    def build(self, options: HFOptions, data: DataInfo) -> nn.Module:
        import transformers

        config = self.hf_config(options)
        cls = getattr(transformers, self.auto_class_for(config))
        model = cls.from_config(config, attn_implementation=options.attn)
        return HFWrapper(model.float().eval(), paired_inputs=self.objective == "classification")

    def map_keys(
        self, tensors: Mapping[str, torch.Tensor], options: HFOptions | None = None
    ) -> dict[str, torch.Tensor]:
        """File names -> module names: transformers' own renamings of old checkpoints
        (e.g. GPT-NeoX ``embed_out`` -> ``lm_head``), stale buffers dropped, ``model.``."""
        renames = _renamings(options.config) if options is not None and options.config else ()
        out = {}
        for k, v in tensors.items():
            if _STALE_BUFFERS.search(k):
                continue
            for pattern, target in renames:
                k = pattern.sub(target, k)
            out[PREFIX + k] = v
        return out

    def unmap_keys(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k.removeprefix(PREFIX): v for k, v in tensors.items()}

    def data_hooks(self, options: HFOptions, folder: Any) -> DataHooks:
        config = json.loads(options.config) if options.config else {}
        context = next(
            (config[k] for k in ("n_positions", "max_position_embeddings") if k in config), None
        )
        if context is not None and config.get("model_type") in ("roberta", "xlm-roberta"):
            context -= 2  # RoBERTa's positions start after the padding index
        return DataHooks(
            tokenizer=load_tokenizer(folder), objective=self.objective, max_length=context
        )

    def logits(self, output: torch.Tensor) -> torch.Tensor:
        """The logit vectors at GAUSS_POSITIONS evenly spaced positions of each sequence (an
        output already restricted to them, inside the Gauss pass, is taken whole)."""
        if output.dim() == 2:
            return output
        return sequence_logits(output)


class CausalLMAdapter(_HFAdapter):
    name = "hf-causal-lm"
    description = "transformers causal LM (GPT-2, GPT-NeoX/Pythia, Llama...), next-token loss"
    objective = "causal"
    suffixes = ("ForCausalLM", "LMHeadModel")
    auto_class = "AutoModelForCausalLM"
    example_config: ClassVar[dict[str, Any]] = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": 40,
        "n_positions": 16,
        "n_embd": 16,
        "n_layer": 1,
        "n_head": 2,
        "bos_token_id": 1,
        "eos_token_id": 1,
    }

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = output[:, :-1, :]
        nxt = target[:, 1:]
        ce = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), nxt.reshape(-1), reduction="none"
        )
        return ce.view(nxt.shape).mean(dim=1)

    def correct(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Fraction of next tokens predicted right, per sequence."""
        return (output[:, :-1, :].argmax(-1) == target[:, 1:]).double().mean(dim=1)


class MaskedLMAdapter(_HFAdapter):
    name = "hf-masked-lm"
    description = "transformers masked LM (BERT, RoBERTa...), loss at fixed seeded masks"
    objective = "masked"
    suffixes = ("ForMaskedLM", "ForPreTraining")
    auto_class = "AutoModelForMaskedLM"
    example_config: ClassVar[dict[str, Any]] = {
        "model_type": "bert",
        "architectures": ["BertForMaskedLM"],
        "vocab_size": 40,
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 16,
        "pad_token_id": 0,
    }

    def auto_class_for(self, config: Any) -> str:
        archs = getattr(config, "architectures", None) or []
        if any(str(a).endswith("ForPreTraining") for a in archs):
            return "AutoModelForPreTraining"
        return self.auto_class

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = nn.functional.cross_entropy(
            output.reshape(-1, output.shape[-1]).float(),
            target.reshape(-1),
            ignore_index=-100,
            reduction="none",
        ).view(target.shape)
        scored = (target != -100).sum(dim=1).clamp_min(1)
        return ce.sum(dim=1) / scored

    def correct(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        scored = target != -100
        hits = (output.argmax(-1) == target) & scored
        return hits.sum(dim=1).double() / scored.sum(dim=1).clamp_min(1)


class SequenceClassificationAdapter(_HFAdapter):
    name = "hf-sequence-classification"
    description = "transformers sequence classifier, cross-entropy on a labelled CSV/JSONL"
    objective = "classification"
    suffixes = ("ForSequenceClassification",)
    auto_class = "AutoModelForSequenceClassification"
    eval_batch_candidates = (8, 32, 128)
    example_config: ClassVar[dict[str, Any]] = {
        **MaskedLMAdapter.example_config,
        "architectures": ["BertForSequenceClassification"],
        "id2label": {"0": "a", "1": "b", "2": "c"},
        "label2id": {"a": 0, "b": 1, "c": 2},
    }

    def data_hooks(self, options: HFOptions, folder: Any) -> DataHooks:
        hooks = super().data_hooks(options, folder)
        config = json.loads(options.config) if options.config else {}
        label2id = config.get("label2id")
        if isinstance(label2id, dict) and label2id:
            hooks.label_names = {str(k): int(v) for k, v in label2id.items()}
        return hooks


@functools.lru_cache(maxsize=8)
def _renamings(config_json: str) -> tuple[tuple[re.Pattern[str], str], ...]:
    """The key renamings transformers applies when loading this architecture's checkpoints
    (read off a model built on the meta device: no memory, no initialisation)."""
    import transformers

    try:
        from transformers.conversion_mapping import WeightRenaming, get_model_conversion_mapping
    except ImportError:  # older transformers: checkpoints already use the module's names
        return ()
    config = json.loads(config_json)
    adapter = next(
        (
            a
            for a in (CausalLMAdapter(), MaskedLMAdapter(), SequenceClassificationAdapter())
            if a.claims_config(config)
        ),
        CausalLMAdapter(),
    )
    hf_config = adapter.hf_config(HFOptions(config=config_json))
    with torch.device("meta"):
        model = getattr(transformers, adapter.auto_class_for(hf_config)).from_config(hf_config)
    out: list[tuple[re.Pattern[str], str]] = []
    for t in get_model_conversion_mapping(model):
        if isinstance(t, WeightRenaming) and len(t.target_patterns) == 1:
            dst = t.target_patterns[0].replace("\\", "\\\\")
            out.extend((re.compile(src), dst) for src in t.source_patterns)
    return tuple(out)


def load_tokenizer(folder: Any) -> Any:
    """The tokenizer saved beside the weights (local files only, no remote code)."""
    if folder is None:
        raise DataError("text data needs the model's tokenizer files beside its weights")
    folder = Path(folder)
    names = ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model")
    if not any((folder / n).is_file() for n in names):
        raise DataError(
            f"{folder}: no tokenizer files (tokenizer.json, vocab.txt, ...) beside the weights; "
            "text data is tokenized with the model's own tokenizer"
        )
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False
        )
    except Exception as exc:  # a broken tokenizer folder: one line, not a traceback
        raise DataError(f"{folder}: cannot load its tokenizer ({exc})") from exc
