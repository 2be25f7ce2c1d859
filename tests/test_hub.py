"""hf:, timm: and init: sources through the real resolver, fully offline.

A temporary Hugging Face cache is built by hand (``tests/hubcache.py``) with tiny GPT-2,
GPT-NeoX and BERT models under two revisions (``step0`` and ``main``) and a tiny timm model;
``HF_HUB_OFFLINE=1`` is set, so nothing can be downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests import hubcache
from tests.conftest import run_cli, run_subprocess


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hub")
    cache = root / "cache"
    src = root / "models"  # the saved folders, copied into the cache below
    src.mkdir()
    for kind in ("gpt2", "neox", "llama", "bert", "bert-cls"):
        hubcache.add_revision(
            cache, f"org/tiny-{kind}", ["step0"], hubcache.hf_model_files(kind, 0, parent=src)
        )
        hubcache.add_revision(
            cache,
            f"org/tiny-{kind}",
            ["main"],
            hubcache.hf_model_files(kind, 0, steps=3, parent=src),
        )
    hubcache.add_revision(
        cache,
        "timm/test_resnet.r160_in1k",
        ["main"],
        hubcache.timm_model_files(0, steps=3, parent=src),
    )
    (root / "corpus.txt").write_text(hubcache.CORPUS)
    rows = ["text,label"] + [
        f"{' '.join(hubcache.WORDS[i : i + 6])},{'pos' if i % 3 else 'neg'}" for i in range(30)
    ]
    (root / "reviews.csv").write_text("\n".join(rows) + "\n")
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        (root / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            pixels = (rng.random((40, 40, 3)) * 255).astype("uint8")
            Image.fromarray(pixels).save(root / "imgs" / c / f"{i}.png")
    return root


@pytest.fixture
def offline(hub: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HUB_CACHE", str(hub / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MLISCAN_CACHE", str(hub / "mliscan-cache"))
    return hub


def _quick_text(root: Path) -> list:
    """Options of a quick text evaluation: 2 alphas over 16-token sequences, no Gauss."""
    return [
        "--data",
        "text",
        "--data-file",
        root / "corpus.txt",
        "--alphas",
        2,
        "--no-gauss",
        "--seq-len",
        16,
    ]


def _compare(args: list, capsys: pytest.CaptureFixture[str]) -> dict:
    code, out, err = run_cli(["compare", *args, "--json", "-", "-q"], capsys)
    assert code in (0, 1), err
    return json.loads(out)


def test_causal_lm_curve_matches_an_independent_computation(
    offline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rec = _compare(
        [
            "hf:org/tiny-gpt2@step0",
            "hf:org/tiny-gpt2@main",
            "--data",
            "text",
            "--data-file",
            offline / "corpus.txt",
            "--alphas",
            3,
            "--seq-len",
            32,
        ],
        capsys,
    )
    assert rec["arch"] == "hf-causal-lm"  # read from config.json, no --arch
    src = rec["sources"]
    assert src["init"]["revision"] == "step0" and src["final"]["revision"] == "main"
    assert len(src["init"]["commit"]) == 40 and src["init"]["commit"] != src["final"]["commit"]

    # independent: transformers' own loader, interpolation by hand, token-level cross-entropy
    from transformers import AutoModelForCausalLM, AutoTokenizer

    a = AutoModelForCausalLM.from_pretrained(src["init"]["path"])
    b = AutoModelForCausalLM.from_pretrained(src["final"]["path"])
    tok = AutoTokenizer.from_pretrained(src["init"]["path"])
    ids = tok(hubcache.CORPUS, add_special_tokens=False)["input_ids"][:16384]
    n = len(ids) // 32
    x = torch.tensor(ids[: n * 32]).view(n, 32)
    sb = b.state_dict()
    mid = {
        k: v + 0.5 * (sb[k] - v) if v.is_floating_point() else v for k, v in a.state_dict().items()
    }
    for alpha, state, got in ((0.0, a.state_dict(), rec["loss"][0]), (0.5, mid, rec["loss"][1])):
        a.load_state_dict(state)
        with torch.no_grad():
            logits = a(input_ids=x).logits
        want = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).double(), x[:, 1:].reshape(-1)
        )
        assert got == pytest.approx(float(want), rel=1e-5), alpha
        with torch.no_grad():  # and transformers' own loss of the same tokens
            own = a(input_ids=x, labels=x).loss
        assert got == pytest.approx(float(own), rel=1e-5), alpha
    # the tied output head is counted once in the distance
    params = {n for n, _ in b.named_parameters()}
    d = sum(
        float(((sb[k] - a0).double() ** 2).sum())
        for k, a0 in AutoModelForCausalLM.from_pretrained(src["init"]["path"]).state_dict().items()
        if k in params
    )
    assert rec["distance"] == pytest.approx(d**0.5, rel=1e-6)
    assert rec["gauss_length"] is not None and rec["gauss_length"] >= 0


def test_neox_masked_and_classifier_adapters(
    offline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--alphas", 3, "--seq-len", 24, "--data", "text"]
    neox = _compare(
        [
            "hf:org/tiny-neox@step0",
            "hf:org/tiny-neox@main",
            *common,
            "--data-file",
            offline / "corpus.txt",
        ],
        capsys,
    )
    assert neox["arch"] == "hf-causal-lm" and all(np.isfinite(neox["loss"]))
    llama = _compare(
        [
            "hf:org/tiny-llama@step0",
            "hf:org/tiny-llama@main",
            *common,
            "--data-file",
            offline / "corpus.txt",
        ],
        capsys,
    )
    assert llama["arch"] == "hf-causal-lm" and llama["gauss_length"] > 0
    bert = _compare(
        [
            "hf:org/tiny-bert@step0",
            "hf:org/tiny-bert@main",
            *common,
            "--data-file",
            offline / "corpus.txt",
        ],
        capsys,
    )
    assert bert["arch"] == "hf-masked-lm"
    # the masks are fixed: the curve is reproducible
    again = _compare(
        [
            "hf:org/tiny-bert@step0",
            "hf:org/tiny-bert@main",
            *common,
            "--data-file",
            offline / "corpus.txt",
            "--no-gauss",
        ],
        capsys,
    )
    # (with the Gauss length the loss comes from the second-order pass: the same sums in
    # another order, equal to rounding)
    np.testing.assert_allclose(again["loss"], bert["loss"], rtol=1e-6)
    cls = _compare(
        [
            "hf:org/tiny-bert-cls@step0",
            "hf:org/tiny-bert-cls@main",
            *common,
            "--data-file",
            offline / "reviews.csv",
        ],
        capsys,
    )
    assert cls["arch"] == "hf-sequence-classification" and cls["data"]["examples"] == 30
    assert all(0 <= v <= 1 for v in cls["accuracy"])


def test_masked_lm_masks_are_seeded_and_equal_per_row(offline: Path) -> None:
    from mliscan.adapters.hf import MaskedLMAdapter

    from mliscan.spec import DataSpec
    from mliscan.text import load_text

    src = next((offline / "cache" / "models--org--tiny-bert" / "snapshots").iterdir())
    adapter = MaskedLMAdapter()
    opts = adapter.parse_options(
        adapter.options_from_config(json.loads((src / "config.json").read_text()))
    )
    hooks = adapter.data_hooks(opts, src)
    spec = DataSpec("text", data_file=str(offline / "corpus.txt"), seq_len=20)
    x1, y1, _ = load_text(spec, hooks)
    x2, y2, _ = load_text(spec, hooks)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    scored = (y1 != -100).sum(dim=1)
    assert (scored == scored[0]).all() and scored[0] == round(0.15 * 18)
    assert (x1[y1 != -100] == hooks.tokenizer.mask_token_id).all()
    assert (x1[:, 0] == hooks.tokenizer.cls_token_id).all()


def _timm_folder_args(offline: Path) -> list[object]:
    """A fresh init of the offline timm test model to its weights, on the image folder."""
    return [
        "init:timm:test_resnet.r160_in1k",
        "timm:test_resnet.r160_in1k",
        "--data",
        "imagefolder",
        "--data-dir",
        offline / "imgs",
        "--alphas",
        3,
    ]


def test_timm_init_source_and_imagefolder(
    offline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _timm_folder_args(offline)
    rec = _compare(args, capsys)
    assert rec["arch"] == "timm" and rec["data"]["examples"] == 9
    assert rec["sources"]["init"]["kind"] == "init" and rec["sources"]["init"]["seed"] == 0
    assert rec["sources"]["final"]["repo"] == "timm/test_resnet.r160_in1k"
    # the fresh initialisation is cached and deterministic
    again = _compare(args, capsys)
    assert again["loss"] == rec["loss"]
    seeded = _compare(["init:timm:test_resnet.r160_in1k?seed=1", *args[1:]], capsys)
    assert seeded["loss"][0] != rec["loss"][0] and seeded["loss"][-1] == rec["loss"][-1]


def test_init_of_a_transformer_runs_its_own_init_weights(offline: Path, capsys) -> None:
    rec = _compare(
        [
            "init:hf:org/tiny-gpt2@main",
            "hf:org/tiny-gpt2@main",
            *_quick_text(offline),
        ],
        capsys,
    )
    from safetensors.torch import load_file

    init = load_file(Path(rec["sources"]["init"]["path"]) / "model.safetensors")
    # GPT-2's _init_weights: normal(0, 0.02) embeddings, LayerNorm weight 1
    assert float(init["transformer.wte.weight"].std()) == pytest.approx(0.02, rel=0.1)
    assert torch.equal(init["transformer.h.0.ln_1.weight"], torch.ones(32))


def test_integrity_notes_for_the_same_revision(offline: Path, capsys) -> None:
    rec = _compare(
        [
            "hf:org/tiny-gpt2@step0",
            "hf:org/tiny-gpt2@step0",
            *_quick_text(offline),
        ],
        capsys,
    )
    assert any("same commit" in n for n in rec["notes"])
    assert any("identical" in n for n in rec["notes"])


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("org/tiny-gpt2", "write hf:org/tiny-gpt2"),
        ("hf:org/tiny-gpt2@nope", "revision 'nope' is not in the local Hugging Face cache"),
        ("hf:org/absent", "not in the local Hugging Face cache"),
        ("hf:../../etc", "not a Hub repository id"),
    ],
)
def test_source_errors_are_one_line_exit_2(offline: Path, source: str, expected: str) -> None:
    proc = run_subprocess(
        [
            "compare",
            source,
            "hf:org/tiny-gpt2@main",
            "--data",
            "text",
            "--data-file",
            offline / "corpus.txt",
        ]
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("mliscan:")]
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_offline_flag_reads_the_cache_only(hub: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(hub / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    rec = _compare(
        [
            "hf:org/tiny-gpt2@step0",
            "hf:org/tiny-gpt2@main",
            "--offline",
            "--data",
            "text",
            "--data-file",
            hub / "corpus.txt",
            "--alphas",
            2,
            "--no-gauss",
            "--seq-len",
            16,
        ],
        capsys,
    )
    assert rec["sources"]["final"]["revision"] == "main"


def test_low_precision_working_dtype_interpolates_in_float32(offline: Path, capsys) -> None:
    base = [
        "hf:org/tiny-gpt2@step0",
        "hf:org/tiny-gpt2@main",
        "--data",
        "text",
        "--data-file",
        offline / "corpus.txt",
        "--alphas",
        3,
        "--no-gauss",
        "--seq-len",
        16,
    ]
    f32 = _compare(base, capsys)
    bf16 = _compare([*base, "--dtype", "bfloat16"], capsys)
    assert bf16["loss"] == pytest.approx(f32["loss"], rel=2e-2)


def test_image_folder_larger_than_the_memory_budget_is_streamed(
    offline: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    args = [*_timm_folder_args(offline), "--batch-size", 4]
    in_memory = _compare(args, capsys)
    monkeypatch.setenv("MLISCAN_DATA_MEMORY", "1000")  # bytes: far below 9 decoded images
    from mliscan.evaluate import StreamedInputs
    from mliscan.pipeline import open_source, setup
    from mliscan.spec import DataSpec, EvalSpec

    ckpt = open_source("timm:test_resnet.r160_in1k")
    ctx = setup(ckpt, None, {}, DataSpec("imagefolder", data_dir=str(offline / "imgs")), EvalSpec())
    assert ctx.dataset.streamed and isinstance(ctx.prepared.inputs, StreamedInputs)
    streamed = _compare(args, capsys)
    # batch-norm statistics, loss and Gauss length agree with the in-memory evaluation (the
    # streamed data's full-data statistics are computed in chunks: float32 rounding differs)
    assert streamed["loss"] == pytest.approx(in_memory["loss"], rel=1e-5)
    assert streamed["gauss_length"] == pytest.approx(in_memory["gauss_length"], rel=1e-5)
    assert list((offline / "mliscan-cache" / "data").glob("imagefolder-*.f32"))


def test_sparse_gauss_logits_equal_the_full_output(offline: Path, monkeypatch, capsys) -> None:
    import mliscan.adapters.hf as hf

    args = [
        "hf:org/tiny-gpt2@step0",
        "hf:org/tiny-gpt2@main",
        "--data",
        "text",
        "--data-file",
        offline / "corpus.txt",
        "--alphas",
        3,
        "--seq-len",
        24,
        "--data-limit",
        8,
    ]
    sparse = _compare(args, capsys)
    monkeypatch.setattr(hf, "SPARSE_GAUSS_LOGITS", False)
    full = _compare(args, capsys)
    assert sparse["gauss_integrand"] == pytest.approx(full["gauss_integrand"], rel=1e-5)
    assert sparse["loss"] == full["loss"]


@pytest.mark.parametrize("kind", ["gpt2", "neox", "llama", "bert", "bert-cls"])
def test_hub_models_take_the_gauss_length_by_their_rules_equal_to_nested_jvp(
    offline: Path, kind: str
) -> None:
    """GPT-2, GPT-NeoX, Llama, BERT masked LM and classifier: the second-order rules
    (adapters/hf.py) are used and give nested jvp's Gauss integrand (float64)."""
    from mliscan.evaluate import PathEvaluator
    from mliscan.pipeline import open_source, setup
    from mliscan.spec import DataSpec, EvalSpec

    first = open_source(f"hf:org/tiny-{kind}@step0")
    last = open_source(f"hf:org/tiny-{kind}@main")
    corpus = offline / ("reviews.csv" if kind == "bert-cls" else "corpus.txt")
    data = DataSpec(name="text", data_file=str(corpus), seq_len=16, limit=6)
    ctx = setup(first, None, None, data, EvalSpec(dtype="float64"))
    adapter, options = ctx.choice.adapter, ctx.choice.options
    t0, t1 = adapter.map_keys(first.tensors, options), adapter.map_keys(last.tensors, options)
    found = {}
    for method in ("auto", "jvp"):
        spec = EvalSpec(gauss_method=method, dtype="float64")
        ev = PathEvaluator(adapter, ctx.module, t0, t1, ctx.prepared, spec)
        found[method] = ev.run([0.0, 0.6, 1.0]).gauss_integrand
        assert ev.fast_gauss == (method == "auto")
        assert ev.per_alpha.second_order == (method == "auto")  # the self-check passed
    # Llama's RMS norm runs in float32 inside transformers even for float64 weights
    np.testing.assert_allclose(found["auto"], found["jvp"], rtol=1e-6 if kind == "llama" else 1e-8)


def test_a_rule_that_disagrees_with_the_model_falls_back_to_nested_jvp(
    offline: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transformers release that changed a model must not change a number: the rule's
    logits are checked against the forward pass, and nested jvp takes over."""
    from mliscan.adapters import hf_rules as hf

    from mliscan.evaluate import PathEvaluator
    from mliscan.pipeline import open_source, setup
    from mliscan.spec import DataSpec, EvalSpec

    first, last = open_source("hf:org/tiny-gpt2@step0"), open_source("hf:org/tiny-gpt2@main")
    data = DataSpec(name="text", data_file=str(offline / "corpus.txt"), seq_len=16, limit=4)
    ctx = setup(first, None, None, data, EvalSpec())
    adapter, options = ctx.choice.adapter, ctx.choice.options
    t0, t1 = adapter.map_keys(first.tensors, options), adapter.map_keys(last.tensors, options)
    reference = PathEvaluator(
        adapter, ctx.module, t0, t1, ctx.prepared, EvalSpec(gauss_method="jvp")
    ).run([0.0, 1.0])
    right = hf._gpt2
    monkeypatch.setattr(
        hf, "_gpt2", lambda t, model, ids: t.rules.map(lambda v: 1.01 * v, right(t, model, ids))
    )
    ev = PathEvaluator(adapter, ctx.module, t0, t1, ctx.prepared, EvalSpec())
    with pytest.warns(UserWarning, match="second-order path disagrees"):
        curve = ev.run([0.0, 1.0])
    assert not ev.per_alpha.second_order
    np.testing.assert_allclose(curve.gauss_integrand, reference.gauss_integrand, rtol=1e-5)
    np.testing.assert_allclose(curve.loss, reference.loss, rtol=1e-6)


@pytest.mark.parametrize("kind", ["gpt2", "neox", "llama", "bert", "bert-cls"])
def test_every_study_opens_every_hub_kind_the_same_way(
    offline: Path, kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """compare, grid, plane, trajectory and logits open endpoints through one session, so a
    checkpoint saved by transformers (GPT-NeoX's head is ``embed_out``) reads the same in all
    of them; ``init:hf:`` builds a fresh init of the same model that pairs with it."""
    first, last = f"hf:org/tiny-{kind}@step0", f"hf:org/tiny-{kind}@main"
    fresh = f"init:hf:org/tiny-{kind}@main?seed=1"
    quick = _quick_text(offline)
    if kind == "bert-cls":
        quick[3] = offline / "reviews.csv"
    rec = _compare([first, last, *quick], capsys)
    assert rec["sources"]["final"]["repo"] == f"org/tiny-{kind}"
    loss = rec["loss"]
    code, _, err = run_cli(
        [
            "grid",
            "--init",
            first,
            "--init",
            fresh,
            "--optimum",
            last,
            "--out",
            tmp_path / "g",
            *quick,
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    import polars as pl

    paths = pl.read_parquet(tmp_path / "g" / "paths.parquet")
    own = paths.filter(pl.col("family") == "init-optimum").sort("a")
    assert len(paths) == 3 and len(own) == 2
    curves = pl.read_parquet(tmp_path / "g" / "curves.parquet")
    assert sorted(curves["loss"].to_list()).count(loss[0]) >= 1  # the same step0 loss
    code, _, err = run_cli(
        [
            "plane",
            first,
            last,
            fresh,
            "--out",
            tmp_path / "p",
            "--resolution",
            3,
            *quick[:4],
            *quick[-2:],
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    code, _, err = run_cli(
        [
            "trajectory",
            f"hf:org/tiny-{kind}",
            "--revisions",
            "step0,main",
            "--out",
            tmp_path / "t",
            *quick,
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    rows = pl.read_parquet(tmp_path / "t" / "trajectory.parquet")
    assert sorted(rows["loss"].to_list()) == pytest.approx(sorted([loss[0], loss[-1]]), rel=1e-6)
    code, _, err = run_cli(
        [
            "logits",
            first,
            last,
            "--out",
            tmp_path / "l",
            "--examples",
            2,
            *[a for a in quick if a != "--no-gauss"],
            "-q",
        ],
        capsys,
    )
    if kind == "bert-cls":  # Figure 3's logit trajectories are a classifier's
        assert code == 0, err
    else:
        assert code == 2 and "needs a classifier" in err, err


def test_every_study_opens_a_timm_model_the_same_way(
    offline: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh, trained, *data = _timm_folder_args(offline)
    other = "init:timm:test_resnet.r160_in1k?seed=1"
    rec = _compare([fresh, trained, *data, "--no-gauss"], capsys)
    for argv in (
        ["grid", "--init", fresh, "--init", other, "--optimum", trained, "--out", tmp_path / "g"],
        ["plane", fresh, trained, other, "--out", tmp_path / "p", "--resolution", 3],
        ["logits", fresh, trained, "--out", tmp_path / "l", "--examples", 2],
    ):
        extra = data if argv[0] == "grid" else data[:4]
        code, _, err = run_cli([*argv, *extra, "-q"], capsys)
        assert code == 0, err
    import polars as pl

    paths = pl.read_parquet(tmp_path / "g" / "paths.parquet")
    row = paths.filter((pl.col("family") == "init-optimum") & (pl.col("a") == paths["a"][0]))
    assert len(paths) == 3 and len(row) >= 1
    curves = pl.read_parquet(tmp_path / "g" / "curves.parquet")
    assert rec["loss"][-1] in curves["loss"].to_list()  # the same trained weights, same loss


@pytest.mark.parametrize("kind", ["gpt2", "bert", "bert-cls", "neox", "llama"])
def test_hub_losses_are_transformers_own(
    offline: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """L(0) and L(1) equal the loss transformers itself computes (``labels=``) for the same
    examples, with the endpoints loaded by transformers' own loader."""
    from mliscan.adapters.hf import MaskedLMAdapter, SequenceClassificationAdapter
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    from mliscan.spec import DataSpec
    from mliscan.text import load_text

    corpus = offline / ("reviews.csv" if kind == "bert-cls" else "corpus.txt")
    rec = _compare(
        [
            f"hf:org/tiny-{kind}@step0",
            f"hf:org/tiny-{kind}@main",
            "--data",
            "text",
            "--data-file",
            corpus,
            "--seq-len",
            16,
            "--alphas",
            2,
            "--no-gauss",
        ],
        capsys,
    )
    src = rec["sources"]
    if kind in ("gpt2", "neox", "llama"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(src["init"]["path"])
        ids = tok(hubcache.CORPUS, add_special_tokens=False)["input_ids"]
        n = len(ids) // 16
        x = torch.tensor(ids[: n * 16]).view(n, 16)
        for role, got in (("init", rec["loss"][0]), ("final", rec["loss"][-1])):
            model = AutoModelForCausalLM.from_pretrained(src[role]["path"]).eval()
            with torch.no_grad():
                own = model(input_ids=x, labels=x).loss
            assert got == pytest.approx(float(own), rel=1e-5), role
        return
    classify = kind == "bert-cls"
    adapter = SequenceClassificationAdapter() if classify else MaskedLMAdapter()
    auto = AutoModelForSequenceClassification if classify else AutoModelForMaskedLM
    folder = Path(src["init"]["path"])
    folder = folder if folder.is_dir() else folder.parent
    opts = adapter.parse_options(
        adapter.options_from_config(json.loads((folder / "config.json").read_text()))
    )
    x, y, _ = load_text(
        DataSpec("text", data_file=str(corpus), seq_len=16), adapter.data_hooks(opts, folder)
    )
    for role, got in (("init", rec["loss"][0]), ("final", rec["loss"][-1])):
        model = auto.from_pretrained(src[role]["path"]).eval()
        with torch.no_grad():
            if classify:  # [N, 2, L]: token ids and attention mask
                own = model(input_ids=x[:, 0], attention_mask=x[:, 1], labels=y).loss
            else:  # the same number of masked tokens in every row: token mean = row mean
                own = model(input_ids=x, labels=y).loss
        assert got == pytest.approx(float(own), rel=1e-5), role
