"""Typed specs: validation at construction, whatever the caller."""

from __future__ import annotations

import math

import pytest

from mliscan import spec as S


def test_defaults_construct():
    for cls in (S.SourceSpec, S.ArchSpec, S.DataSpec, S.BNSpec, S.EvalSpec, S.GateSpec):
        cls()


@pytest.mark.parametrize(
    ("cls", "values", "needle"),
    [
        (S.EvalSpec, {"alphas": 1}, "--alphas: must be at least 2"),
        (S.EvalSpec, {"alphas": 10**12}, "--alphas: must be at most"),
        (S.EvalSpec, {"alphas": 2.5}, "--alphas: expected a whole number"),
        (S.EvalSpec, {"alphas": True}, "--alphas: expected a whole number"),
        (S.EvalSpec, {"gauss": "false"}, "--gauss: expected true/false"),
        (S.EvalSpec, {"gauss_examples": 0}, "--gauss-examples: must be at least 1"),
        (S.EvalSpec, {"batch_size": 0}, "--batch-size: must be at least 1"),
        (S.EvalSpec, {"device": "quantum"}, "--device: must be auto, cpu"),
        (S.EvalSpec, {"dtype": "complex64"}, "--dtype: expected"),
        (S.EvalSpec, {"amp": "fp8"}, "--amp: expected"),
        (S.BNSpec, {"batch_size": 1}, "--bn-batch-size: must be at least 2"),
        (S.BNSpec, {"max_batches": 3}, "--bn-warmup-batches: takes the first K batches"),
        (S.BNSpec, {"mode": "magic"}, "--bn-mode: expected"),
        (S.GateSpec, {"max_delta": "abc"}, "--max-delta: expected"),
        (S.GateSpec, {"max_delta": math.nan}, "--max-delta: must be a finite number"),
        (S.GateSpec, {"require_monotonic": "false"}, "--require-monotonic: expected true/false"),
        (S.GateSpec, {"min_final_accuracy": 1.5}, "--min-final-accuracy: must be at most 1"),
        (S.VerdictSpec, {"tol": -1.0}, "--tol: must be at least 0"),
        (S.VerdictSpec, {"tol": math.nan}, "--tol: must be a finite number"),
        (S.DataSpec, {"limit": 0}, "--data-limit: must be at least 1"),
        (S.DataSpec, {"split": "valid"}, "--split: expected"),
        (S.ArchSpec, {"arch_opt": ("novalue",)}, "--arch-opt: expects KEY=VALUE"),
        (S.PlaneSpec, {"resolution": 1}, "--resolution: must be at least 2"),
        (S.PlaneSpec, {"range": (1.0, 0.0, 0.0, 1.0)}, "--range: expects finite"),
        (S.PlaneSpec, {"range": (0.0, 1.0, 0.0)}, "--range: expects finite"),
    ],
)
def test_bad_values_are_one_line_spec_errors(cls, values, needle):
    with pytest.raises(S.SpecError) as info:
        cls(**values)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message
    assert isinstance(info.value, ValueError)  # typed errors subclass builtins


def test_ints_are_accepted_as_floats_and_lists_as_tuples():
    assert S.GateSpec(max_delta=1).max_delta == 1.0
    assert isinstance(S.GateSpec(max_delta=1).max_delta, float)
    assert S.ArchSpec(arch_opt=["a=1"]).arch_opt == ("a=1",)


def test_build_names_the_config_key_and_file():
    with pytest.raises(S.SpecError, match=r"pyproject.toml: max-delta: expected"):
        S.build(S.GateSpec, {"max_delta": "abc"}, {"max_delta": "pyproject.toml: max-delta"})


def test_paper_bn_mode_takes_its_batch_size():
    assert S.BNSpec(mode="paper").batch_size == S.PAPER_BN_BATCH_SIZE


def test_numeric_settings_leave_out_speed_and_verdict_options():
    a = S.EvalSpec(batch_size=None, device="cpu", compile=False, alpha_chunk=1)
    b = S.EvalSpec(batch_size=None, device="auto", compile=True, alpha_chunk=4)
    assert a.numeric_settings() == b.numeric_settings()
    assert S.EvalSpec(alphas=7).numeric_settings() != a.numeric_settings()
    assert S.EvalSpec(bn=S.BNSpec(batch_size=64)).numeric_settings() != a.numeric_settings()


FLAGS = (
    S.AdapterFlag("hidden", "Widths."),
    S.AdapterFlag("bn", "Batch norm.", boolean=True, negative="--no-bn"),
    S.AdapterFlag("init_scheme", "Init.", key="init", choices=("default", "fixup"), rare=True),
)


def test_arch_spec_given_options():
    """Each adapter flag given goes to the adapter option it sets, whatever its name; the
    flags left unset give nothing; --arch-opt adds any other option."""
    spec = S.ArchSpec.with_flags(FLAGS)(
        hidden="8,8", bn=False, init_scheme="fixup", arch_opt=("width = 3",)
    )
    assert spec.given_options() == {"hidden": "8,8", "bn": False, "init": "fixup", "width": "3"}
    assert S.ArchSpec.with_flags(FLAGS)(arch="mlp").given_options() == {}
    assert S.ArchSpec(arch_opt=("depth=2",)).given_options() == {"depth": "2"}


def test_adapter_flags_are_fields_checked_like_every_field():
    cls = S.ArchSpec.with_flags(FLAGS)
    assert issubclass(cls, S.ArchSpec) and cls.__name__ == "ArchSpec"
    with pytest.raises(S.SpecError, match=r"^--init-scheme: must be one of default, fixup"):
        cls(init_scheme="bad")
    with pytest.raises(S.SpecError, match=r"^--bn: expected true/false or none"):
        cls(bn="yes")
    with pytest.raises(S.SpecError, match=r"^--hidden: expected text or none, got 5"):
        cls(hidden=5)
    # listed right after --arch, the option they refine, as the command line shows them
    names = [f.name for f in cls.cli_fields()]
    assert names == ["arch", "hidden", "bn", "init_scheme", "arch_opt", "model", "model_arg"]
    o = S.option_of(next(f for f in cls.cli_fields() if f.name == "init_scheme"))
    assert o is not None and o.panel == S.ARCH and o.rare and o.show == "from metadata"


def test_a_flag_declared_twice_is_declared_alike():
    bn = FLAGS[1]
    assert S.ArchSpec.with_flags((bn, bn)) is not None  # mlp and resnet share --bn
    with pytest.raises(ValueError, match="--bn is declared twice"):
        S.ArchSpec.with_flags((bn, S.AdapterFlag("bn", "Other help.", boolean=True)))
    with pytest.raises(ValueError, match="clash"):
        S.ArchSpec.with_flags((S.AdapterFlag("model", "A model."),))


def test_build_names_where_the_value_came_from_without_module_state() -> None:
    """The location (a config key, a Python argument) travels with the error; nothing is
    kept in the module between calls (mliscan runs inside other people's processes)."""
    import mliscan.spec as S

    with pytest.raises(S.SpecError) as info:
        S.build(S.EvalSpec, {"alphas": 1}, {"alphas": "mliscan.toml: alphas"})
    assert str(info.value).startswith("mliscan.toml: alphas:") and info.value.field == "alphas"
    with pytest.raises(S.SpecError) as info:
        S.EvalSpec(alphas=1)
    assert str(info.value).startswith("--alphas:")
    assert not any(
        isinstance(v, dict) and k.isupper() and k.startswith("_") for k, v in vars(S).items()
    )
