"""Second-order rules (:mod:`mliscan.taylor` jets) for the transformers models that
``adapters/hf.py`` wraps: GPT-2, GPT-NeoX (Pythia), Llama, BERT masked LM and sequence
classifier, written out from their transformers modules (the same weights, the same
arithmetic). The adapter changes for how models are loaded and fed; this module for how a
model's forward pass is differentiated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

# A transformers model or one of its parts: the rules read its submodules and config by their
# transformers names, which torch's typing of Module attributes (Tensor | Module) cannot see.
HubModule = Any

# ---- second-order rules (mliscan.taylor) for the common causal LMs --------------------------
# GPT-2, GPT-NeoX (Pythia) and Llama are written out in jet rules below, from their
# transformers modules (the same weights, the same arithmetic, logits only at the Gauss
# positions). A model or configuration outside these gets no rule and keeps nested jvp; the
# engine also checks each rule's logits against the model's own forward once per evaluator
# and falls back to nested jvp if they differ (a transformers release that changed a model).
_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu-tanh",
    "gelu_pytorch_tanh": "gelu-tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}


def _activation(J: Any, name: str, x: Any) -> Any:
    kind = _ACTIVATIONS[name]
    if kind == "gelu":
        return J.gelu(x)
    if kind == "gelu-tanh":
        return J.gelu(x, "tanh")
    return J.relu(x) if kind == "relu" else J.silu(x)


def _attend(
    J: Any, q: Any, k: Any, v: Any, scaling: float, rows: torch.Tensor | None = None
) -> Any:
    """Causal softmax attention of jets [N, heads, L, d]; with ``rows``, the queries are at
    those positions only (q [N, heads, len(rows), d])."""
    length = k[0].shape[-2]
    future = torch.ones(length, length, dtype=torch.bool, device=k[0].device).triu(1)
    if rows is not None:
        future = future.index_select(0, rows)
    return J.attention(q, k, v, scaling, future)


def _rows(x: Any, rows: torch.Tensor | None, dim: int) -> Any:
    """A jet at the positions ``rows`` (along ``dim``) only; None: every position."""
    if rows is None:
        return x
    z = x[0]

    def pick(u: torch.Tensor) -> torch.Tensor:
        return (u if u.shape == z.shape else u.expand(z.shape)).index_select(dim, rows)

    return tuple(None if u is None else pick(u) for u in x)


def _layers(
    block: Callable[..., Any], layers: Any, x: Any
) -> tuple[Any, Callable[[Any, torch.Tensor | None], Any]]:
    """Every layer but the last applied to ``x``, and the last as a function of (x, rows):
    the part of the model that :meth:`Tracer.tail` runs at the rows it needs."""
    layers = list(layers)
    for layer in layers[:-1]:
        x = block(layer, x)
    if not layers:
        return x, lambda h, rows: _rows(h, rows, 1)
    return x, lambda h, rows: block(layers[-1], h, rows)


def _merge_heads(J: Any, x: Any) -> Any:
    return J.map(lambda u: u.transpose(1, 2).reshape(*u.shape[:1], u.shape[2], -1), x)


def _rotary(module: nn.Module, q: Any, k: Any, cos: torch.Tensor, sin: torch.Tensor) -> Any:
    """The model's own rotary embedding: linear in q and k for fixed cos and sin."""
    import sys

    apply = sys.modules[type(module).__module__].apply_rotary_pos_emb
    parts: list[tuple[Any, Any]] = []
    for a, b in zip(q, k, strict=True):
        if a is None and b is None:
            parts.append((None, None))
            continue
        # a derivative known to be zero on one side only (its weight does not move): zeros
        qa = torch.zeros_like(q[0]) if a is None else a
        kb = torch.zeros_like(k[0]) if b is None else b
        parts.append(apply(qa, kb, cos, sin))
    return tuple(p[0] for p in parts), tuple(p[1] for p in parts)


def _gpt2(t: Any, model: HubModule, ids: torch.Tensor) -> Any:
    J = t.rules
    core = model.transformer
    positions = torch.arange(ids.shape[1], device=ids.device)
    x = J.add(t.embedding(core.wte, ids), t.embedding(core.wpe, positions))
    act = model.config.activation_function

    def conv1d(m: nn.Module, h: Any) -> Any:  # transformers' Conv1D: h @ W + b
        return t.dense(m, h, transposed=True)

    def layer(block: HubModule, x: Any, rows: torch.Tensor | None = None) -> Any:
        attn = block.attn
        qkv = conv1d(attn.c_attn, t.layer_norm(block.ln_1, x))
        heads, hd = attn.num_heads, attn.head_dim

        def split(u: torch.Tensor, j: int) -> torch.Tensor:
            part = u.split(heads * hd, dim=-1)[j]
            return part.view(*part.shape[:-1], heads, hd).transpose(1, 2)

        q, k, v = (J.map(lambda u, j=j: split(u, j), qkv) for j in range(3))
        q = _rows(q, rows, 2)
        out = conv1d(attn.c_proj, _merge_heads(J, _attend(J, q, k, v, attn.scaling, rows)))
        x = J.add(_rows(x, rows, 1), out)
        h = conv1d(block.mlp.c_fc, t.layer_norm(block.ln_2, x))
        return J.add(x, conv1d(block.mlp.c_proj, _activation(J, act, h)))

    x, last = _layers(layer, core.h, x)
    return t.tail(lambda h, rows: t.dense(model.lm_head, t.layer_norm(core.ln_f, last(h, rows))), x)


def _embed_rotary(t: Any, embed: nn.Module, rotary: nn.Module, ids: torch.Tensor) -> Any:
    """The token embeddings' jet, and the model's own rotary tables for these positions."""
    x = t.embedding(embed, ids)
    position_ids = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
    cos, sin = rotary(x[0], position_ids=position_ids)
    return x, cos, sin


def _neox(t: Any, model: HubModule, ids: torch.Tensor) -> Any:
    J = t.rules
    core = model.gpt_neox
    x, cos, sin = _embed_rotary(t, core.embed_in, core.rotary_emb, ids)
    act = model.config.hidden_act

    def block(layer: HubModule, x: Any, rows: torch.Tensor | None = None) -> Any:
        attn = layer.attention
        hs = attn.head_size
        qkv = t.dense(attn.query_key_value, t.layer_norm(layer.input_layernorm, x))
        qkv = J.map(lambda u: u.view(*u.shape[:-1], -1, 3 * hs).transpose(1, 2), qkv)
        q, k, v = (J.map(lambda u, j=j: u.chunk(3, dim=-1)[j], qkv) for j in range(3))
        q, k = _rotary(attn, q, k, cos, sin)
        q = _rows(q, rows, 2)
        out = t.dense(attn.dense, _merge_heads(J, _attend(J, q, k, v, attn.scaling, rows)))

        def mlp(h: Any) -> Any:
            inner = t.dense(
                layer.mlp.dense_h_to_4h, t.layer_norm(layer.post_attention_layernorm, h)
            )
            return t.dense(layer.mlp.dense_4h_to_h, _activation(J, act, inner))

        x = _rows(x, rows, 1)
        if layer.use_parallel_residual:
            return J.add(J.add(mlp(x), out), x)
        x = J.add(out, x)
        return J.add(mlp(x), x)

    x, last = _layers(block, core.layers, x)
    head = getattr(model, "lm_head", None) or model.embed_out  # embed_out before transformers 5
    return t.tail(
        lambda h, rows: t.dense(head, t.layer_norm(core.final_layer_norm, last(h, rows))), x
    )


def _llama(t: Any, model: HubModule, ids: torch.Tensor) -> Any:
    J = t.rules
    core = model.model
    x, cos, sin = _embed_rotary(t, core.embed_tokens, core.rotary_emb, ids)
    act = model.config.hidden_act

    def rms(m: HubModule, h: Any) -> Any:
        shape = (m.weight.shape[-1],)
        return J.layer_norm(h, shape, t.param(m, "weight"), None, m.variance_epsilon, rms=True)

    def block(layer: HubModule, x: Any, rows: torch.Tensor | None = None) -> Any:
        attn = layer.self_attn
        hd, groups = attn.head_dim, attn.num_key_value_groups
        h = rms(layer.input_layernorm, x)

        def heads(m: nn.Module) -> Any:
            return J.map(lambda u: u.view(*u.shape[:-1], -1, hd).transpose(1, 2), t.dense(m, h))

        q, k = _rotary(attn, heads(attn.q_proj), heads(attn.k_proj), cos, sin)
        v = heads(attn.v_proj)
        k, v = (J.map(lambda u: u.repeat_interleave(groups, dim=1), a) for a in (k, v))
        q = _rows(q, rows, 2)
        out = t.dense(attn.o_proj, _merge_heads(J, _attend(J, q, k, v, attn.scaling, rows)))
        x = J.add(_rows(x, rows, 1), out)
        h = rms(layer.post_attention_layernorm, x)
        mlp = layer.mlp
        inner = J.mul(_activation(J, act, t.dense(mlp.gate_proj, h)), t.dense(mlp.up_proj, h))
        return J.add(x, t.dense(mlp.down_proj, inner))

    x, last = _layers(block, core.layers, x)
    return t.tail(lambda h, rows: t.dense(model.lm_head, rms(core.norm, last(h, rows))), x)


def _bert_encoder(
    t: Any, bert: HubModule, ids: torch.Tensor, mask: torch.Tensor | None
) -> tuple[Any, Callable[[Any, torch.Tensor | None], Any]]:
    """BertModel up to the last hidden states (absolute positions, token type 0): the
    hidden states before the last layer, and the last layer as a function of (x, rows)."""
    J = t.rules
    emb = bert.embeddings
    length = ids.shape[1]
    positions = emb.position_ids[0, :length]
    types = torch.zeros_like(positions)
    x = J.add(
        t.embedding(emb.word_embeddings, ids), t.embedding(emb.position_embeddings, positions)
    )
    x = t.layer_norm(emb.LayerNorm, J.add(x, t.embedding(emb.token_type_embeddings, types)))
    act = bert.config.hidden_act
    padding = None if mask is None else (mask == 0)[:, None, None, :]  # keys that are padding

    def block(layer: HubModule, x: Any, rows: torch.Tensor | None = None) -> Any:
        sa = layer.attention.self
        hd = sa.attention_head_size

        def heads(m: nn.Module, h: Any) -> Any:
            return J.map(lambda u: u.view(*u.shape[:-1], -1, hd).transpose(1, 2), t.dense(m, h))

        q = heads(sa.query, _rows(x, rows, 1))  # the queries at the rows only
        k, v = heads(sa.key, x), heads(sa.value, x)
        out = _merge_heads(J, J.attention(q, k, v, sa.scaling, padding))
        so = layer.attention.output
        x = t.layer_norm(so.LayerNorm, J.add(t.dense(so.dense, out), _rows(x, rows, 1)))
        inner = _activation(J, act, t.dense(layer.intermediate.dense, x))
        return t.layer_norm(layer.output.LayerNorm, J.add(t.dense(layer.output.dense, inner), x))

    return _layers(block, bert.encoder.layer, x)


def _bert_mlm(t: Any, model: HubModule, ids: torch.Tensor) -> Any:
    J = t.rules
    head = model.cls.predictions
    tr = head.transform
    act = model.config.hidden_act

    def predict(x: Any) -> Any:
        h = t.layer_norm(tr.LayerNorm, _activation(J, act, t.dense(tr.dense, x)))
        return t.dense(head.decoder, h)

    x, last = _bert_encoder(t, model.bert, ids, None)
    return t.tail(lambda h, rows: predict(last(h, rows)), x)


def _bert_classifier(t: Any, model: HubModule, pair: torch.Tensor) -> Any:
    """The pooler reads the first token: the last layer runs at that position only."""
    J = t.rules
    x, last = _bert_encoder(t, model.bert, pair[:, 0], pair[:, 1])

    def classify(h: Any, rows: torch.Tensor | None) -> Any:
        first = J.map(lambda u: u[:, 0], last(h, rows))
        return t.dense(model.classifier, J.tanh(t.dense(model.bert.pooler.dense, first)))

    return t.tail(classify, x, torch.zeros(1, dtype=torch.long, device=pair.device))


def rule_for(model: nn.Module) -> Any:
    """The second-order rule of a transformers model, or None (nested jvp then)."""
    config = getattr(model, "config", None)
    name = type(model).__name__
    if config is None:
        return None
    if name == "GPT2LMHeadModel":
        ok = not config.add_cross_attention and config.activation_function in _ACTIVATIONS
        return _gpt2 if ok else None
    if name == "GPTNeoXForCausalLM":
        return _neox if config.hidden_act in _ACTIVATIONS else None
    bert_ok = (
        config.hidden_act in _ACTIVATIONS
        and getattr(config, "position_embedding_type", "absolute") == "absolute"
        and not getattr(config, "is_decoder", False)
        and not getattr(config, "add_cross_attention", False)
    )
    if name == "BertForMaskedLM":
        return _bert_mlm if bert_ok else None
    if name == "BertForSequenceClassification":
        ok = bert_ok and config.problem_type in (None, "single_label_classification")
        return _bert_classifier if ok else None
    if name == "LlamaForCausalLM":
        ok = config.hidden_act in _ACTIVATIONS and not getattr(config, "pretraining_tp", 1) > 1
        return _llama if ok else None
    return None
