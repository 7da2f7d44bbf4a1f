"""daelab.cpu: the ISA class from /proc/cpuinfo texts of real CPU kinds, and the DAELAB_ISA cap."""
from __future__ import annotations

import pytest

from daelab import cpu
from daelab.errors import ConfigError

X86_BASE = ("fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss "
            "ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology cpuid pni pclmulqdq ssse3 fma "
            "cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm abm "
            "3dnowprefetch fsgsbase bmi1 avx2 smep bmi2 erms invpcid rdseed adx smap clflushopt clwb sha_ni "
            "xsaveopt xsavec xgetbv1 xsaves")
AVX512 = "avx512f avx512dq avx512ifma avx512cd avx512bw avx512vl avx512vbmi avx512_vbmi2 avx512_vnni"


def block(model: str, flags: str, processor: int = 0, number: int = 143) -> str:
    return (f"processor\t: {processor}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: {number}\n"
            f"model name\t: {model}\nstepping\t: 8\ncpu MHz\t\t: 2000.000\nflags\t\t: {flags}\n"
            "bugs\t\t: spectre_v1 spectre_v2\nbogomips\t: 4000.00\n\n")


SAPPHIRE_RAPIDS = block("Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz",
                        f"{X86_BASE} {AVX512} avx_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8")
EPYC_ROME = block("AMD EPYC 7B12", X86_BASE)
SKYLAKE = block("Intel(R) Xeon(R) CPU @ 2.00GHz", f"{X86_BASE} {AVX512}")
GENOA = block("AMD EPYC 9B14", f"{X86_BASE} {AVX512} avx512_bf16")
# A KVM guest (measured on, 2026-12-03) on an Intel Xeon of family 6, model 207, a generation that
# has AMX, whose hypervisor shows AVX-512 but neither avx512_bf16 nor amx_*: the flags the guest is
# shown decide, not the model number.
MASKED_XEON = block("Intel(R) Xeon(R) Processor", f"{X86_BASE} nonstop_tsc tsc_known_freq tsc_deadline_timer hle rtm "
                    f"{AVX512} avx512_bitalg avx512_vpopcntdq gfni vaes vpclmulqdq rdpid fsrm", number=207)
OLD_X86 = block("QEMU Virtual CPU version 2.5+", "fpu de pse tsc msr pae mce cx8 apic sep mtrr sse sse2 sse4_1")
GRAVITON = ("processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics "
            "fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
            "CPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n"
            "processor\t: 1\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd\n\n")


@pytest.mark.parametrize("text, model, isa, native", [
    (SAPPHIRE_RAPIDS, "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", "amx", True),
    (GENOA, "AMD EPYC 9B14", "avx512_bf16", True),
    (SKYLAKE, "Intel(R) Xeon(R) CPU @ 2.00GHz", "avx512", False),
    (MASKED_XEON, "Intel(R) Xeon(R) Processor", "avx512", False),
    (EPYC_ROME, "AMD EPYC 7B12", "avx2", False),
    (OLD_X86, "QEMU Virtual CPU version 2.5+", "other", False),
    (GRAVITON, "unknown CPU", "other", False),
])
def test_parse_cpuinfo_classes_real_cpu_kinds(text, model, isa, native):
    info = cpu.parse_cpuinfo(text)
    assert (info.model, info.isa, info.detected_isa, info.native_bf16) == (model, isa, isa, native)
    assert info.capped_by is None


def test_parse_cpuinfo_reads_the_first_processor_only():
    # a (hypothetical) mixed machine: the first block decides, later blocks do not add flags
    info = cpu.parse_cpuinfo(EPYC_ROME + block("other", f"{X86_BASE} {AVX512}", processor=1))
    assert (info.model, info.isa) == ("AMD EPYC 7B12", "avx2")


def test_arm_flags_are_not_mistaken_for_x86_and_name_falls_back_to_hardware():
    info = cpu.parse_cpuinfo(GRAVITON)
    assert not info.flags  # ARM says "Features", not "flags"
    assert cpu.parse_cpuinfo("Hardware\t: BCM2835\nFeatures\t: fp asimd\n").model == "BCM2835"


def test_an_avx512_class_needs_the_whole_subset_pytorch_uses():
    assert cpu.classify_flags({"avx2", "fma", "avx512f"}) == "avx2"
    # amx without avx512_bf16 below it is not counted as amx (classes build on each other)
    assert cpu.classify_flags(set(X86_BASE.split()) | set(AVX512.split()) | {"amx_bf16", "amx_tile"}) == "avx512"


@pytest.mark.parametrize("override, isa, native", [
    ("avx2", "avx2", False), ("AVX512", "avx512", False), ("avx512_bf16", "avx512_bf16", True),
    ("scalar", "other", False), ("amx", "amx", True), ("", "amx", True), (None, "amx", True),
])
def test_override_caps_an_amx_machine(override, isa, native):
    info = cpu.cap_isa(cpu.parse_cpuinfo(SAPPHIRE_RAPIDS), override)
    assert (info.isa, info.native_bf16, info.detected_isa) == (isa, native, "amx")
    assert (info.capped_by is not None) == (isa != "amx")


def test_override_never_raises_the_class():
    info = cpu.cap_isa(cpu.parse_cpuinfo(EPYC_ROME), "amx")
    assert (info.isa, info.capped_by, info.native_bf16) == ("avx2", None, False)


def test_unknown_override_is_an_error_listing_the_valid_names():
    with pytest.raises(ConfigError, match="avx2, avx512, avx512_bf16, amx") as caught:
        cpu.cap_isa(cpu.parse_cpuinfo(EPYC_ROME), "sse9")
    assert "sse9" in str(caught.value)


def test_cpu_info_reads_the_file_and_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "cpuinfo"
    path.write_text(SAPPHIRE_RAPIDS)
    monkeypatch.setenv("DAELAB_ISA", "avx2")
    info = cpu.cpu_info(cpuinfo=path)
    assert (info.isa, info.source, info.capped_by) == ("avx2", str(path), "avx2")
    assert "ISA class avx2 (capped by DAELAB_ISA=avx2; the CPU has amx)" in info.describe()
    monkeypatch.delenv("DAELAB_ISA")
    assert cpu.cpu_info(cpuinfo=path).isa == "amx"


def test_cpu_info_falls_back_to_torch_without_flags(tmp_path, monkeypatch):
    monkeypatch.delenv("DAELAB_ISA", raising=False)
    monkeypatch.setattr(cpu, "_from_torch", lambda: cpu.CpuInfo("x", "avx512", "avx512", source="torch"))
    info = cpu.cpu_info(cpuinfo=tmp_path / "missing")
    assert (info.isa, info.source, info.model) == ("avx512", "torch", "x")
    arm = tmp_path / "arm"
    arm.write_text("Hardware\t: BCM2835\nFeatures\t: fp asimd\n")
    assert cpu.cpu_info(cpuinfo=arm).model == "BCM2835"  # the file's name, the library's class


def test_has_native_bf16_honours_the_cap(monkeypatch, tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(GENOA)
    monkeypatch.setattr(cpu, "CPUINFO", path)
    assert cpu.has_native_bf16("") is True
    assert cpu.has_native_bf16("avx512") is False


def test_apply_isa_cap_sets_library_caps_but_not_over_the_users(monkeypatch):
    for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX")
    applied = cpu.apply_isa_cap(cpu.cap_isa(cpu.parse_cpuinfo(SAPPHIRE_RAPIDS), "avx2"))
    assert applied == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert cpu.apply_isa_cap(cpu.parse_cpuinfo(SAPPHIRE_RAPIDS)) == {}  # no cap, nothing set
    assert cpu.isa_environment("amx") == {}
    with pytest.raises(ConfigError):
        cpu.isa_environment("avx9")
