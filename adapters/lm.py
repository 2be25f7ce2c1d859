"""Small word-level language models: an LSTM and a causal Transformer.

Inputs are token ids [N, L]; the output is logits [N, L, V]; targets are the next token of
each position, [N, L] (``--data wikitext2`` / ``tinytext`` build them). The loss is the
per-token cross-entropy averaged over a sequence's positions; every sequence has L tokens, so
the mean over examples is the mean over tokens. Accuracy is the share of next tokens predicted
right. The Gauss length uses the logit vectors at 4 evenly spaced positions of each sequence.

Both models are written out in plain tensor operations (the LSTM gate equations of
``torch.nn.LSTM``, in its i, f, g, o order; attention with an explicit causal mask): the fused
kernels of ``nn.LSTM`` and ``nn.TransformerEncoderLayer`` have no forward-mode derivative,
which the Gauss length needs. Initialisation follows PyTorch's word_language_model example:
embeddings and decoder uniform(-0.1, 0.1), LSTM weights uniform(-1/sqrt(H), 1/sqrt(H)).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch
from torch import nn
from torch.nn import functional as F

from mliscan.adapter import (
    Adapter,
    DataInfo,
    TrainDefaults,
    option,
    parse_bool,
    sequence_logits,
)
from mliscan.errors import AdapterOptionError

if TYPE_CHECKING:  # rules are stated through the tracer the engine passes in
    from mliscan.taylor import Jet, Stack, Tracer


def _positive(value: Any) -> int:
    n = int(value)
    if n < 1:
        raise ValueError(f"must be at least 1, got {value!r}")
    return n


def _fraction(value: Any) -> float:
    p = float(value)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"must be in [0, 1), got {value!r}")
    return p


class LSTMLayer(nn.Module):
    """One LSTM layer, batch first, zero initial state; gates i, f, g, o as torch.nn.LSTM."""

    def __init__(self, inputs: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden, inputs))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden, hidden))
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden))
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden))
        bound = 1.0 / math.sqrt(hidden)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        pre = F.linear(x, self.weight_ih, self.bias_ih)  # all input projections at once
        h = x.new_zeros(n, self.hidden)
        c = x.new_zeros(n, self.hidden)
        outs = []
        for t in range(length):
            gates = pre[:, t] + F.linear(h, self.weight_hh, self.bias_hh)
            i, f, g, o = gates.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        return torch.stack(outs, dim=1)

    def taylor_forward(self, t: Tracer, st: Stack) -> Stack:
        """The same recurrence in second-order rules (mliscan.taylor): z, z', z''."""
        J = t.rules
        x = t.jet(st)
        n, length = x[0].shape[:2]
        pre = t.dense(self, x, "weight_ih", "bias_ih")
        h = c = J.zeros(x[0].new_zeros(n, self.hidden))
        outs = []

        def at(v: torch.Tensor, s: int) -> torch.Tensor:  # the inputs of one step
            return v[:, s]

        def gate(v: torch.Tensor, j: int) -> torch.Tensor:  # gate j of 4
            return v.chunk(4, dim=1)[j]

        for step in range(length):
            gates = J.add(
                J.map(functools.partial(at, s=step), pre), t.dense(self, h, "weight_hh", "bias_hh")
            )
            i, f, g, o = (J.map(functools.partial(gate, j=j), gates) for j in range(4))
            c = J.add(J.mul(J.sigmoid(f), c), J.mul(J.sigmoid(i), J.tanh(g)))
            h = J.mul(J.sigmoid(o), J.tanh(c))
            outs.append(h)
        return t.stack(J.stack(outs, 1))


class LSTMLM(nn.Module):
    taylor_positions = True  # taylor_forward honours t.positions (the Gauss logits only)

    def __init__(self, vocab: int, emb: int, hidden: int, layers: int, dropout: float, tied: bool):
        super().__init__()
        self.embed = nn.Embedding(vocab, emb)
        self.rnn = nn.ModuleList(
            [LSTMLayer(emb if i == 0 else hidden, hidden) for i in range(layers)]
        )
        self.drop = nn.Dropout(dropout)
        self.decoder = nn.Linear(hidden, vocab)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if tied:
            self.decoder.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.embed(ids))
        for layer in self.rnn:
            x = self.drop(layer(x))
        return self.decoder(x)

    def taylor_forward(self, t: Tracer, st: Stack) -> Stack:
        x = t.stack(t.embedding(self.embed, st[0]))  # st: the token ids
        for layer in self.rnn:
            x = t(layer, x)  # dropout is the identity in eval mode
        return t.stack(t.head(lambda h: t.dense(self.decoder, h), t.jet(x)))


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, self.heads, dim // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [N, heads, L, d]
        scores = q @ k.transpose(-1, -2) / math.sqrt(dim // self.heads)
        future = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))

    def taylor_forward(self, t: Tracer, st: Stack) -> Stack:
        return t.stack(self.rows_rule(t, t.jet(st), None))

    def rows_rule(self, t: Tracer, x: Jet, rows: torch.Tensor | None) -> Jet:
        """The rule with the queries at the positions ``rows`` only (None: every position);
        the keys and values at every position."""
        J = t.rules
        n, length, dim = x[0].shape
        hd = dim // self.heads
        qkv = t.dense(self.qkv, x)

        def head(u: torch.Tensor, j: int) -> torch.Tensor:  # q, k or v: [N, heads, L, d]
            return u.view(n, length, 3, self.heads, hd)[:, :, j].transpose(1, 2)

        q, k, v = (J.map(functools.partial(head, j=j), qkv) for j in range(3))
        future = torch.ones(length, length, dtype=torch.bool, device=x[0].device).triu(1)
        if rows is not None:
            q = J.map(lambda u: u.index_select(2, rows), q)
            future = future.index_select(0, rows)
        out = J.attention(q, k, v, 1.0 / math.sqrt(hd), future)
        width = out[0].shape[2]
        out = J.map(lambda u: u.transpose(1, 2).reshape(n, width, dim), out)
        return t.dense(self.proj, out)


class Block(nn.Module):
    """Post-norm Transformer block (as torch.nn.TransformerEncoderLayer's default)."""

    def __init__(self, dim: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.attn = CausalSelfAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, ff)
        self.ff2 = nn.Linear(ff, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.drop(self.attn(x)))
        return self.norm2(x + self.drop(self.ff2(self.drop(F.relu(self.ff1(x))))))

    def taylor_forward(self, t: Tracer, st: Stack) -> Stack:
        return t.stack(self.rows_rule(t, t.jet(st), None))

    def rows_rule(self, t: Tracer, x: Jet, rows: torch.Tensor | None) -> Jet:
        """The block's rule at the positions ``rows`` only (None: every position): after
        its attention every position is computed on its own."""
        J = t.rules
        a = self.attn.rows_rule(t, x, rows)
        if rows is not None:
            x = J.map(lambda u: u.index_select(1, rows), x)
        x = t.layer_norm(self.norm1, J.add(x, a))
        h = t.dense(self.ff2, J.relu(t.dense(self.ff1, x)))
        return t.layer_norm(self.norm2, J.add(x, h))


class TransformerLM(nn.Module):
    taylor_positions = True  # taylor_forward honours t.positions (the Gauss logits only)
    positions: torch.Tensor  # a buffer (registered in __init__)

    def __init__(
        self, vocab: int, dim: int, heads: int, ff: int, layers: int, dropout: float, context: int
    ) -> None:
        super().__init__()
        self.dim = dim
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList([Block(dim, heads, ff, dropout) for _ in range(layers)])
        self.drop = nn.Dropout(dropout)
        self.decoder = nn.Linear(dim, vocab)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        # sinusoidal positions: a constant, not a weight (not saved, not interpolated)
        pos = torch.arange(context).unsqueeze(1)
        freq = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
        table = torch.zeros(context, dim)
        table[:, 0::2] = torch.sin(pos * freq)
        table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
        self.register_buffer("positions", table, persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        length = ids.shape[1]
        if length > self.positions.shape[0]:
            raise ValueError(
                f"sequences of {length} tokens exceed the context of {self.positions.shape[0]}"
            )
        x = self.embed(ids) * math.sqrt(self.dim) + self.positions[:length].to(
            self.embed.weight.dtype
        )
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        return self.decoder(x)

    def taylor_forward(self, t: Tracer, st: Stack) -> Stack:
        ids = st[0]
        length = ids.shape[1]
        if length > self.positions.shape[0]:
            raise ValueError(
                f"sequences of {length} tokens exceed the context of {self.positions.shape[0]}"
            )
        e, d1, _ = t.embedding(self.embed, ids)
        scale = math.sqrt(self.dim)
        pos = self.positions[:length].to(self.embed.weight.dtype)
        x = t.stack((e * scale + pos, None if d1 is None else d1 * scale, None))
        blocks = cast(list[Block], list(self.blocks))
        for block in blocks[:-1]:
            x = t(block, x)

        def tail(h: Jet, rows: torch.Tensor | None) -> Jet:
            """The last block and the decoder at the rows (Tracer.tail)."""
            if blocks:
                return t.dense(self.decoder, blocks[-1].rows_rule(t, h, rows))
            if rows is not None:
                h = t.rules.map(lambda u: u.index_select(1, rows), h)
            return t.dense(self.decoder, h)

        return t.stack(t.tail(tail, t.jet(x)))


class _WordLMAdapter(Adapter):
    custom_logits = True  # the Gauss logits are a subset of the output
    default_data = "tinytext"
    train_defaults = TrainDefaults(optimizer="adam", lr=1e-3, epochs=20, batch_size=20)
    eval_batch_candidates = (16, 64, 256)

    def example(self) -> tuple[dict[str, Any], DataInfo]:
        return self.small_example, DataInfo((9,), 30)

    small_example: ClassVar[dict[str, Any]] = {}

    def example_batch(self, info: DataInfo, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.randint(0, info.num_classes, (n, info.input_shape[0] + 1))
        return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(
            output.reshape(-1, output.shape[-1]).float(), target.reshape(-1), reduction="none"
        )
        return ce.view(target.shape).mean(dim=1)

    def correct(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (output.argmax(-1) == target).double().mean(dim=1)

    def logits(self, output: torch.Tensor) -> torch.Tensor:
        return sequence_logits(output)


@dataclass(frozen=True)
class LSTMOptions:
    emb: int = option(128, "embedding size", _positive)
    hidden: int = option(128, "LSTM hidden units per layer", _positive)
    layers: int = option(2, "LSTM layers", _positive)
    dropout: float = option(0.2, "dropout during training", _fraction)
    tied: bool = option(False, "tie the decoder to the embedding (needs emb = hidden)", parse_bool)


class LSTMLMAdapter(_WordLMAdapter):
    name = "lstm-lm"
    description = "small word-level LSTM language model, per-token cross-entropy"
    Options = LSTMOptions
    small_example: ClassVar[dict[str, Any]] = {"emb": 8, "hidden": 8, "layers": 1, "tied": True}

    def validate_options(self, options: LSTMOptions) -> None:
        if options.tied and options.emb != options.hidden:
            raise AdapterOptionError("--arch lstm-lm: tied=on needs emb equal to hidden")

    def infer_options(self, tensors: Any) -> dict[str, Any]:
        if "embed.weight" not in tensors:
            return {}
        layers = sum(1 for k in tensors if k.endswith(".weight_ih"))
        out = {"emb": int(tensors["embed.weight"].shape[1]), "layers": layers}
        if "rnn.0.weight_hh" in tensors:
            out["hidden"] = int(tensors["rnn.0.weight_hh"].shape[1])
        return out

    def build(self, options: LSTMOptions, data: DataInfo) -> nn.Module:
        return LSTMLM(
            data.num_classes,
            options.emb,
            options.hidden,
            options.layers,
            options.dropout,
            options.tied,
        )


@dataclass(frozen=True)
class TransformerOptions:
    dim: int = option(128, "model width (embedding size)", _positive)
    heads: int = option(4, "attention heads (must divide dim)", _positive)
    ff: int = option(256, "feed-forward hidden units", _positive)
    layers: int = option(2, "Transformer blocks", _positive)
    dropout: float = option(0.2, "dropout during training", _fraction)
    context: int = option(256, "longest sequence (positional table size)", _positive)


class TransformerLMAdapter(_WordLMAdapter):
    name = "transformer-lm"
    description = "small causal Transformer word-level language model, per-token cross-entropy"
    Options = TransformerOptions
    small_example: ClassVar[dict[str, Any]] = {
        "dim": 8,
        "heads": 2,
        "ff": 16,
        "layers": 1,
        "context": 16,
    }

    def validate_options(self, options: TransformerOptions) -> None:
        if options.dim % options.heads or options.dim % 2:
            raise AdapterOptionError(
                "--arch transformer-lm: dim must be even and divisible by heads"
            )

    def infer_options(self, tensors: Any) -> dict[str, Any]:
        if "embed.weight" not in tensors:
            return {}
        out = {
            "dim": int(tensors["embed.weight"].shape[1]),
            "layers": sum(1 for k in tensors if k.endswith("attn.qkv.weight")),
        }
        if "blocks.0.ff1.weight" in tensors:
            out["ff"] = int(tensors["blocks.0.ff1.weight"].shape[0])
        return out

    def build(self, options: TransformerOptions, data: DataInfo) -> nn.Module:
        return TransformerLM(
            data.num_classes,
            options.dim,
            options.heads,
            options.ff,
            options.layers,
            options.dropout,
            options.context,
        )
