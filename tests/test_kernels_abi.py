"""The C kernels' interface: one header read by the compiler and by ctypes, and the loader refusing any drift."""
import ctypes
import logging
import shutil
import subprocess

import pytest
import torch

from daelab.kernels import KernelError, _abi, _loader, ptr

pytestmark = pytest.mark.skipif(_loader.load_kernels() is None, reason="no C compiler for the fused kernels")


@pytest.fixture(autouse=True)
def quick_builds(monkeypatch, tmp_path):
    """Builds of edited copies at -O0 (a second, not ten), into this test's own cache."""
    monkeypatch.setattr(_loader, "COMPILE_FLAGS", _loader.COMPILE_FLAGS + ["-O0"])
    monkeypatch.setenv("DAELAB_CACHE", str(tmp_path / "cache"))


def _copy_source(tmp_path, **edits):
    """A copy of the kernels' sources in tmp_path/src; ``edits``: _fused_c=(old, new) etc., each checked to apply."""
    folder = tmp_path / "src"
    folder.mkdir()
    for original in sorted(_loader.SOURCE.parent.glob("_*.[ch]")):
        text = original.read_text()
        edit = edits.pop(original.name.replace(".", "_"), None)
        if edit is not None:
            assert edit[0] in text
            text = text.replace(*edit)
        (folder / original.name).write_text(text)
    assert not edits  # every edit found its file
    return folder / _loader.SOURCE.name


def _load_with_one_warning(monkeypatch, tmp_path, caplog, source):
    """load_kernels() for ``source``, in a fresh cache: returns the warnings it logged."""
    monkeypatch.setattr(_loader, "_LIB", False)
    monkeypatch.setattr(_loader, "SOURCE", source)
    with caplog.at_level(logging.WARNING, logger="daelab.kernels._loader"):
        assert _loader.load_kernels() is None
        assert _loader.load_kernels() is None  # remembered: no second build, no second warning
    warnings = [r.getMessage() for r in caplog.records if r.name == "daelab.kernels._loader"]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    return warnings[0]


def test_the_header_declares_every_kernel_as_daelab_calls_it():
    lib = _loader.load_kernels()  # the process's library, built before this test's fixture
    interface = _abi.parse_header(_loader.HEADER)
    assert set(lib.kernels) == set(_abi.CALLS)  # no kernel daelab does not call, none it calls missing
    gather = interface.functions["gather_gaussian"]
    assert [p.ctype for p in gather.params] == [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
                                                ctypes.c_int64, ctypes.c_float, ctypes.c_uint64, ctypes.c_uint32,
                                                ctypes.c_void_p, ctypes.c_void_p]
    assert lib.gather_gaussian.function.argtypes == [p.ctype for p in gather.params]
    labels = next(p for p in interface.functions["classifier_tail"].params if p.name == "labels")
    assert labels.index_range == ("0", "classes") and labels.strided and labels.element == "int64_t"
    assert interface.statuses[0] == "done" and len(interface.statuses) >= 5
    assert interface.constants["DAELAB_TAIL_MAX_CLASSES"] == 16
    if shutil.which("nm"):  # every function the library exports is declared in the header
        symbols = subprocess.run(["nm", "-D", "--defined-only", str(lib.path)], capture_output=True, text=True,
                                 check=True).stdout
        exported = {line.split()[-1] for line in symbols.splitlines() if line.split()[1:2] == ["T"]}
        assert exported == set(interface.functions)


def test_a_definition_that_differs_from_its_prototype_does_not_load(monkeypatch, tmp_path, caplog):
    # dropout_mask's count narrowed to 32 bits in the C file only: the compiler rejects it
    source = _copy_source(tmp_path, _fused_c=("int dropout_mask(uint64_t seed, uint32_t stream, int64_t n,",
                                            "int dropout_mask(uint64_t seed, uint32_t stream, int32_t n,"))
    warning = _load_with_one_warning(monkeypatch, tmp_path, caplog, source)
    assert "fused CPU kernels unavailable" in warning
    assert "conflicting types for" in warning and "dropout_mask" in warning


def test_a_kernel_missing_from_the_header_does_not_load(monkeypatch, tmp_path, caplog):
    source = _copy_source(tmp_path, _fused_c=("/* dst (bf16) = src (fp32)", "int extra_kernel(void) { return 0; }\n/*"))
    warning = _load_with_one_warning(monkeypatch, tmp_path, caplog, source)
    assert "extra_kernel" in warning


def test_a_changed_prototype_is_refused_though_it_builds(monkeypatch, tmp_path, caplog):
    # the mask's two strides swapped in both files: it compiles, and would read the masks transposed
    swap = ("int64_t mask_seed_stride, int64_t mask_row_stride, float *dbias)",
            "int64_t mask_row_stride, int64_t mask_seed_stride, float *dbias)")
    header_swap = ("int64_t mask_seed_stride,\n                       int64_t mask_row_stride,\n"
                   "                       float *dbias);",
                   "int64_t mask_row_stride,\n                       int64_t mask_seed_stride,\n"
                   "                       float *dbias);")
    source = _copy_source(tmp_path, _classifier_c=swap, _fused_h=header_swap)
    warning = _load_with_one_warning(monkeypatch, tmp_path, caplog, source)
    assert len(list((tmp_path / "cache" / "kernels").glob("fused-*.so"))) == 1  # it did build
    assert "relu_mask_backward is declared as" in warning and "but daelab calls it with" in warning


def test_a_library_built_from_another_header_is_refused(tmp_path):
    source = _copy_source(tmp_path, _fused_h=("#endif\n", "/* another revision */\n#endif\n"))
    library = _loader.build_kernels(source=source)
    assert _loader.open_kernels(library, source.with_name("_fused.h")).debug is False  # with its own header: fine
    with pytest.raises(_abi.KernelInterfaceError, match="built from another _fused.h"):
        _loader.open_kernels(library, _loader.HEADER)


def test_a_size_the_kernel_has_no_room_for_is_an_error_not_skipped_work():
    lib = _loader.load_kernels()
    seeds, batch, hidden, classes = 1, 4, 8, lib.constants["DAELAB_TAIL_MAX_CLASSES"] + 1
    floats = {name: torch.zeros(size) for name, size in [
        ("a2", seeds * batch * hidden), ("mask", batch * hidden), ("gamma", hidden), ("beta", hidden),
        ("w3", hidden * classes), ("b3", classes), ("rm", hidden), ("rv", hidden), ("h", batch * hidden),
        ("da2", batch * hidden), ("dw3", hidden * classes), ("db3", classes), ("dgamma", hidden), ("dbeta", hidden),
        ("db2", hidden), ("work", 3 * batch * hidden + 2 * batch * classes)]}
    floats["da2"].fill_(7.0)
    labels = torch.zeros(batch, dtype=torch.int64)
    f = {name: ptr(t) for name, t in floats.items()}
    with pytest.raises(KernelError, match="classifier_tail: a size is larger than this kernel's fixed work arrays"):
        lib.classifier_tail(f["a2"], seeds, batch, hidden, classes, f["mask"], 0, hidden, ptr(labels), 0, f["gamma"],
                            f["beta"], f["w3"], f["b3"], 1e-3, 0.01, f["rm"], f["rv"], f["h"], f["da2"], f["dw3"],
                            f["db3"], f["dgamma"], f["dbeta"], f["db2"], f["work"])
    assert bool((floats["da2"] == 7.0).all())  # refused before any work: the outputs are as they were


def test_missing_arrays_and_negative_sizes_are_errors():
    lib = _loader.load_kernels()
    with pytest.raises(KernelError, match="dropout_mask: a required array is NULL"):
        lib.dropout_mask(1, 0, 10, 2 ** 31, None, 0.0, None)  # neither output: the C side says so
    with pytest.raises(ValueError, match="n = -1 is negative"):
        lib.to_bf16(ptr(torch.zeros(4)), ptr(torch.zeros(4, dtype=torch.bfloat16)), -1)
    with pytest.raises(KernelError, match="to_bf16: a size or stride is negative"):
        lib.trusted.to_bf16(None, None, -1)  # the C check, without the Python one
    with pytest.raises(ValueError, match="to_bf16: dst is required"):
        lib.to_bf16(ptr(torch.zeros(4)), None, 4)
