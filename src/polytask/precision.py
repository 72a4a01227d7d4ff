"""Which numeric precision to run in: ``train.precision: auto`` picks bf16 only where the hardware runs it natively.

bf16 autocast halves the memory traffic of every matmul, and where the hardware has bf16 dot-product
instructions it is much faster than fp32. Where it has not, the same matmul is *emulated* (converted to
fp32 and back around every product): on a 2-core AVX2 CPU a 640x384 @ 384x1536 product measured 545 ms in
bf16 against 12 ms in fp32. So the rule is:

- **CUDA**: bf16 on compute capability 8.0 and newer (Ampere, Hopper, ...), else fp32 —
  ``torch.cuda.is_bf16_supported()`` alone also says yes on GPUs that only emulate it (T4, V100).
- **CPU (x86)**: bf16 when the CPU has ``avx512_bf16`` or ``amx_bf16`` (Cooper Lake, Sapphire Rapids and
  newer Xeons, AMD Zen 4 and newer) — the instruction sets oneDNN's bf16 kernels need — and oneDNN is not
  capped below them by ``ONEDNN_MAX_CPU_ISA``. ``torch.backends.cpu.get_cpu_capability()`` alone cannot tell:
  it says ``AVX512`` for CPUs with and without bf16. Everything else (AVX2 laptops, most cloud VMs,
  AVX-512 without bf16) gets fp32.
- **CPU (ARM)**: bf16 when the CPU reports the ``bf16`` feature (Graviton 3, Neoverse V1 and newer).
- **Apple MPS, Intel XPU and anything else**: fp32.

``bench/precision.py`` checks the decision against oneDNN's own report of the ISA it dispatches to.

``fp32`` and ``bf16`` are taken as asked; an explicit ``bf16`` on hardware that only emulates it still runs,
with a warning that says why it will be slow.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")

# ONEDNN_MAX_CPU_ISA values that stop oneDNN below its bf16 kernels (its own names, upper case).
_ONEDNN_BELOW_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


@dataclass(frozen=True)
class Hardware:
    """What the decision looks at; ``detect_hardware`` reads it, tests build it by hand."""

    device: str  # "cuda", "cpu", "mps", "xpu", ...
    cuda_bf16: bool = False  # native bf16: compute capability >= 8 (ROCm: torch.cuda.is_bf16_supported())
    cuda_name: str = ""
    cpu_flags: frozenset[str] = frozenset()  # of interest: avx512_bf16, amx_bf16, bf16 (ARM), avx2, avx512f
    cpu_capability: str = ""  # torch.backends.cpu.get_cpu_capability(): DEFAULT, AVX2, AVX512, ...
    onednn_max_isa: str = ""  # the ONEDNN_MAX_CPU_ISA environment variable, if set
    machine: str = ""  # platform.machine()


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision to run in, why, and a warning when an explicit bf16 will be emulated."""

    precision: str  # "fp32" | "bf16"
    requested: str  # "auto" | "fp32" | "bf16"
    reason: str
    warning: str | None = None

    def message(self) -> str:
        how = "chosen automatically" if self.requested == "auto" else "as configured"
        return f"precision {self.precision} ({how}): {self.reason}"


def native_bf16(hw: Hardware) -> tuple[bool, str]:
    """Whether ``hw`` runs bf16 matmuls natively, and a sentence saying why (or why not)."""
    if hw.device == "cuda":
        name = hw.cuda_name or "this GPU"
        return (True, f"{name} supports bf16") if hw.cuda_bf16 else (False, f"{name} has no bf16 support")
    if hw.device != "cpu":
        return False, f"bf16 autocast is not used on {hw.device} devices"
    flags = hw.cpu_flags
    arm = hw.machine.lower() in ("aarch64", "arm64")
    if arm:
        if "bf16" in flags:
            return True, "this ARM CPU has the bf16 instructions"
        return False, "this ARM CPU has no bf16 instructions, so bf16 would be emulated (many times slower)"
    have = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    if not have:
        seen = hw.cpu_capability or "unknown"
        return False, (f"this CPU has no native bf16 (no AVX512_BF16 or AMX-BF16 instructions; vector unit "
                       f"{seen}), so bf16 matmuls would be emulated, many times slower than fp32")
    isa = hw.onednn_max_isa.strip().upper()
    if isa in _ONEDNN_BELOW_BF16:
        return False, (f"ONEDNN_MAX_CPU_ISA={hw.onednn_max_isa} keeps oneDNN from its bf16 kernels "
                       f"although the CPU has {have[0].upper()}, so bf16 would be emulated")
    return True, f"this CPU has native bf16 ({', '.join(h.upper() for h in have)})"


def choose_precision(requested: str, hw: Hardware) -> PrecisionChoice:
    """The decision for ``requested`` (auto | fp32 | bf16) on ``hw``; pure, so every hardware answer is testable."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    native, why = native_bf16(hw)
    if requested == "fp32":
        return PrecisionChoice("fp32", requested, "fp32 was asked for")
    if requested == "bf16":
        if native:
            return PrecisionChoice("bf16", requested, why)
        return PrecisionChoice("bf16", requested, "bf16 was asked for",
                               warning=f"train.precision is bf16, but {why}. Expect training and inference to be "
                                       "many times slower than fp32; use precision: auto (or fp32) on this machine.")
    return PrecisionChoice("bf16" if native else "fp32", requested, why)


def _cpu_flags() -> frozenset[str]:
    flags: set[str] = set()
    cpu = getattr(torch, "cpu", None)
    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported",
              "avx2": "_is_avx2_supported", "avx512f": "_is_avx512_supported"}
    for flag, fn in probes.items():
        try:
            if getattr(cpu, fn)():
                flags.add(flag)
        except Exception:  # an older torch without the probe: /proc/cpuinfo below still answers
            pass
    try:  # Linux: the kernel's list (the only source for ARM's bf16 feature)
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key = line.split(":", 1)[0].strip().lower()
            if key in ("flags", "features"):
                words = set(line.split(":", 1)[1].split())
                flags |= words & {"avx512_bf16", "amx_bf16", "bf16", "avx2", "avx512f"}
                break
    except OSError:
        pass
    return frozenset(flags)


_detected: dict[str, Hardware] = {}


def detect_hardware(device: torch.device | str) -> Hardware:
    """Read the facts ``choose_precision`` needs for ``device`` (cached per device type)."""
    kind = torch.device(device).type
    if kind not in _detected:
        if kind == "cuda":
            # is_bf16_supported() is True on GPUs that only emulate bf16 (T4, V100); native bf16 tensor cores
            # start with compute capability 8 (Ampere); ROCm devices report their own support
            major, _ = torch.cuda.get_device_capability()
            native = major >= 8 if torch.version.hip is None else bool(torch.cuda.is_bf16_supported())
            hw = Hardware(device="cuda", cuda_bf16=native, cuda_name=torch.cuda.get_device_name())
        elif kind == "cpu":
            hw = Hardware(device="cpu", cpu_flags=_cpu_flags(),
                          cpu_capability=torch.backends.cpu.get_cpu_capability(),
                          onednn_max_isa=os.environ.get("ONEDNN_MAX_CPU_ISA", ""), machine=platform.machine())
        else:
            hw = Hardware(device=kind)
        _detected[kind] = hw
    return _detected[kind]


def resolve_precision(requested: str, device: torch.device | str = "cpu") -> PrecisionChoice:
    """``choose_precision`` on this machine's ``device``."""
    return choose_precision(requested, detect_hardware(device))


def runtime_precision(requested: str, device: torch.device | str = "cpu") -> str:
    """The precision to compute in: ``auto`` resolved for ``device``; ``fp32``/``bf16`` as given."""
    return resolve_precision(requested, device).precision


def announce(choice: PrecisionChoice, file=None) -> None:
    """Print the choice (and any warning) once, on stderr, as ``polytask: ...`` lines."""
    out = file or sys.stderr
    print(f"polytask: {choice.message()}", file=out, flush=True)
    if choice.warning:
        print(f"polytask: warning: {choice.warning}", file=out, flush=True)
