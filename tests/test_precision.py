"""precision: auto picks bf16 only where the hardware runs it natively; explicit bf16 on emulating hardware warns."""

from __future__ import annotations

import json

import pytest

import polytask
import polytask.precision as precision
from polytask.precision import Hardware, choose_precision

AVX2_LAPTOP = Hardware(device="cpu", cpu_flags=frozenset({"avx2"}), cpu_capability="AVX2", machine="x86_64")
AVX512_NO_BF16 = Hardware(device="cpu", cpu_flags=frozenset({"avx2", "avx512f"}), cpu_capability="AVX512",
                          machine="x86_64")
ZEN4 = Hardware(device="cpu", cpu_flags=frozenset({"avx2", "avx512f", "avx512_bf16"}), cpu_capability="AVX512",
                machine="x86_64")
SAPPHIRE_RAPIDS = Hardware(device="cpu", cpu_flags=frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}),
                           cpu_capability="AVX512", machine="x86_64")
CAPPED = Hardware(device="cpu", cpu_flags=frozenset({"avx2", "avx512f", "avx512_bf16"}), cpu_capability="AVX512",
                  onednn_max_isa="avx2", machine="x86_64")
GRAVITON3 = Hardware(device="cpu", cpu_flags=frozenset({"bf16"}), cpu_capability="SVE256", machine="aarch64")
GRAVITON2 = Hardware(device="cpu", cpu_flags=frozenset(), cpu_capability="DEFAULT", machine="aarch64")
A100 = Hardware(device="cuda", cuda_bf16=True, cuda_name="NVIDIA A100")
T4 = Hardware(device="cuda", cuda_bf16=False, cuda_name="Tesla T4")
MPS = Hardware(device="mps")


@pytest.mark.parametrize("hw, expected", [
    (AVX2_LAPTOP, "fp32"), (AVX512_NO_BF16, "fp32"), (ZEN4, "bf16"), (SAPPHIRE_RAPIDS, "bf16"), (CAPPED, "fp32"),
    (GRAVITON3, "bf16"), (GRAVITON2, "fp32"), (A100, "bf16"), (T4, "fp32"), (MPS, "fp32"),
])
def test_auto_picks_bf16_only_where_native(hw, expected):
    choice = choose_precision("auto", hw)
    assert choice.precision == expected
    assert choice.warning is None
    assert choice.reason  # every decision says why
    if expected == "fp32" and hw.device == "cpu":
        assert "emulated" in choice.reason


def test_the_reason_names_what_was_found():
    assert "AVX2" in choose_precision("auto", AVX2_LAPTOP).reason
    assert "AMX_BF16" in choose_precision("auto", SAPPHIRE_RAPIDS).reason
    assert "ONEDNN_MAX_CPU_ISA=avx2" in choose_precision("auto", CAPPED).reason
    assert "Tesla T4" in choose_precision("auto", T4).reason


@pytest.mark.parametrize("hw", [AVX2_LAPTOP, AVX512_NO_BF16, CAPPED, GRAVITON2, T4])
def test_explicit_bf16_on_emulating_hardware_runs_but_warns(hw):
    choice = choose_precision("bf16", hw)
    assert choice.precision == "bf16"
    assert choice.warning and "slower than fp32" in choice.warning


@pytest.mark.parametrize("hw", [ZEN4, SAPPHIRE_RAPIDS, A100])
def test_explicit_choices_are_kept_silently_where_native(hw):
    assert choose_precision("bf16", hw).warning is None
    assert choose_precision("fp32", hw).precision == "fp32"


def test_fp32_is_never_changed():
    for hw in (AVX2_LAPTOP, ZEN4, A100):
        assert choose_precision("fp32", hw) == choose_precision("fp32", hw)
        assert choose_precision("fp32", hw).precision == "fp32"


def test_this_machine_is_detected_consistently():
    hw = precision.detect_hardware("cpu")
    native, _ = precision.native_bf16(hw)
    capped = hw.onednn_max_isa.upper() in precision._ONEDNN_BELOW_BF16
    assert native == (bool({"avx512_bf16", "amx_bf16", "bf16"} & hw.cpu_flags) and not capped)


@pytest.fixture
def fake_hardware(monkeypatch):
    def use(hw: Hardware):
        monkeypatch.setattr(precision, "detect_hardware", lambda device: hw)
    return use


def test_train_on_avx2_picks_fp32_prints_why_and_records_it(toy_config, build_config, fake_hardware, capsys):
    fake_hardware(AVX2_LAPTOP)
    cfg = build_config(toy_config(["classification"], n_train=16, n_eval=8, train={"epochs": 1, "precision": "auto"}))
    result = polytask.train(cfg)
    err = capsys.readouterr().err
    assert "precision fp32 (chosen automatically)" in err and "no native bf16" in err
    resolved = json.loads((result.output_dir / "config.json").read_text())
    assert resolved["train"]["precision"] == "fp32"
    assert resolved["precision_choice"]["requested"] == "auto"
    assert "no native bf16" in resolved["precision_choice"]["reason"]


def test_train_where_bf16_is_native_picks_bf16(toy_config, build_config, fake_hardware, capsys):
    fake_hardware(SAPPHIRE_RAPIDS)
    cfg = build_config(toy_config(["classification"], n_train=16, n_eval=8, train={"epochs": 1, "precision": "auto"}))
    result = polytask.train(cfg)
    assert "precision bf16 (chosen automatically)" in capsys.readouterr().err
    assert json.loads((result.output_dir / "config.json").read_text())["train"]["precision"] == "bf16"
    # the checkpoint keeps the request (auto), so inference decides again on the machine it runs on
    meta = json.loads((result.best_dir / "polytask.json").read_text())
    assert meta["config"]["train"]["precision"] == "auto"


def test_explicit_bf16_on_emulating_cpu_warns_plainly(toy_config, build_config, fake_hardware, capsys):
    fake_hardware(AVX2_LAPTOP)
    cfg = build_config(toy_config(["classification"], n_train=8, n_eval=8, train={"epochs": 1, "precision": "bf16"}))
    polytask.train(cfg)
    err = capsys.readouterr().err
    assert "precision bf16 (as configured)" in err
    assert "warning: train.precision is bf16, but this CPU has no native bf16" in err


def test_the_default_is_auto():
    from polytask.config import TrainConfig

    assert TrainConfig().precision == "auto"


def test_autocast_follows_auto(fake_hardware):
    import torch

    from polytask.evaluate.runner import autocast_context

    fake_hardware(AVX2_LAPTOP)
    with autocast_context("auto", torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
    fake_hardware(ZEN4)
    with autocast_context("auto", torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu")
