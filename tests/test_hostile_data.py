"""Issue 18, hostile inputs: labels out of range, 16-bit and colour pictures, files that lie about their size,
outputs that would land on an input, and directories that cannot be written. Every case ends in one line
(exit 2 for bad input, 1 for a runtime failure), costs no more than its declared size, and loses no file."""
from __future__ import annotations

import errno
import gzip
import os
import struct
import subprocess
import sys
import tempfile
import textwrap
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from daelab.cli import main
from daelab.data import Dataset, load_dataset, load_npy, load_npz, read_idx
from daelab.denoise import denoise_files, read_image_file
from daelab.errors import DataError
from daelab.models import ModelConfig, build_model


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("daelab: error: ") and err.count("\n") == 1, err
    return err


def files_in(directory):
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture(scope="module")
def conv_model():
    """An untrained conv DAE: the file handling below does not care what it learned."""
    torch.manual_seed(0)
    return build_model(ModelConfig(name="conv", channels=4)).eval()


# ------------------------------------------------------------------ 3: --overwrite never touches an input
def test_overwrite_never_replaces_the_reference(tmp_path, tiny_run, tiny_dataset, capsys):
    noisy, clean = tmp_path / "x.npy", tmp_path / "x.denoised.npy"  # the reference sits at the output's path
    np.save(noisy, tiny_dataset.test_images[0])
    np.save(clean, tiny_dataset.test_images[0])
    before = clean.read_bytes()
    assert main(["denoise", str(tiny_run), str(noisy), "--reference", str(clean), "--overwrite"]) == 2
    assert "overwrite the reference" in one_line(capsys)
    assert clean.read_bytes() == before and files_in(tmp_path) == ["x.denoised.npy", "x.npy"]


@pytest.mark.parametrize("link", ["hard", "symbolic"])
def test_overwrite_never_replaces_an_input_behind_a_link(tmp_path, tiny_run, tiny_dataset, capsys, link):
    source, out = tmp_path / "x.npy", tmp_path / "out"
    out.mkdir()
    np.save(source, tiny_dataset.test_images[0])
    (os.link if link == "hard" else os.symlink)(source, out / "x.denoised.npy")
    before = source.read_bytes()
    assert main(["denoise", str(tiny_run), str(source), "--out", str(out), "--overwrite"]) == 2
    assert "overwrite an input" in one_line(capsys)
    assert source.read_bytes() == before and (out / "x.denoised.npy").read_bytes() == before


def test_output_that_is_a_symlink_loop_is_one_line(tmp_path, tiny_run, tiny_dataset, capsys):
    np.save(tmp_path / "x.npy", tiny_dataset.test_images[0])
    os.symlink("x.denoised.npy", tmp_path / "x.denoised.npy")
    assert main(["denoise", str(tiny_run), str(tmp_path / "x.npy"), "--overwrite"]) == 2
    assert "symlink loop" in one_line(capsys)


# ------------------------------------------------------------------------------------ 4: labels
BAD_LABELS = {"minus_one": -1, "minus_1e9": -10**9, "1e6": 10**6}


@pytest.mark.parametrize("case", list(BAD_LABELS))
def test_probe_refuses_labels_out_of_range_in_one_line(tmp_path, tiny_run, tiny_dataset, capsys, case):
    d = tiny_dataset
    labels = d.train_labels.copy()
    labels[7] = BAD_LABELS[case]
    path = tmp_path / "bad.npz"
    np.savez(path, x_train=d.train_images, y_train=labels, x_test=d.test_images, y_test=d.test_labels)
    assert main(["probe", str(tiny_run), "--data-dir", str(path), "--seeds", "1", "--epochs", "1",
                 "--probes", "mlp", "--features", "raw", "--no-progress"]) == 2
    assert "labels" in one_line(capsys)
    assert not (tiny_run / "probe.json").exists() or "bad.npz" not in (tiny_run / "probe.json").read_text()


@pytest.mark.parametrize("labels, words", [
    (np.array([0, 1, -1]), ">= 0"),
    (np.array([0, 1, 2**62]), "classes"),
    (np.array([0, 1, 1001]), "more than the 1000"),
    (np.array([0, 1, 2**64 - 1], np.uint64), "more than the 1000"),  # not wrapped to -1 by a cast first
    (np.array([0.0, 1.0, 2.0]), "not an integer"),
    (np.array([True, False, True]), "not an integer"),
    (np.array([[0, 1, 2]]), "shape"),
    (np.array([0, 1]), "shape"),
])
def test_dataset_checks_labels_however_it_is_built(tmp_path, labels, words):
    images = np.zeros((3, 4, 4), np.uint8)
    with pytest.raises(DataError, match=words):
        Dataset(images, labels, images, np.array([0, 1, 0]))  # built in Python, as probe_run(dataset=...) takes
    if labels.ndim == 1 and len(labels) == 3:
        np.savez(tmp_path / "d.npz", x_train=images, y_train=labels, x_test=images, y_test=np.array([0, 1, 0]))
        with pytest.raises(DataError, match=words):
            load_dataset(tmp_path / "d.npz")


def test_subset_and_good_labels_still_pass(tiny_dataset):
    small = tiny_dataset.subset(5, 3)  # fewer images than classes is fine: a DAE never reads labels
    assert len(small.train_labels) == 5 and tiny_dataset.n_classes == 10


def test_idx_float_labels_are_refused(tmp_path):
    from daelab.data import load_idx_pair, write_idx
    write_idx(tmp_path / "img.gz", np.zeros((3, 4, 4), np.uint8))
    write_idx(tmp_path / "lab.gz", np.array([0.0, 1.5, 2.0]))
    with pytest.raises(DataError, match="not an integer"):
        load_idx_pair(tmp_path / "img.gz", tmp_path / "lab.gz")


# ------------------------------------------------------------------- 9: 16-bit, colour and alpha
def test_16_bit_png_is_scaled_and_written_back_16_bit(tmp_path, tiny_run, make_png):
    values = np.linspace(0, 65535, 28 * 28).astype(np.uint16).reshape(28, 28)
    source = tmp_path / "deep.png"
    source.write_bytes(make_png(28, 28, 16, 0, values.astype(">u2").tobytes()))
    read = read_image_file(source)
    np.testing.assert_allclose(read.images[""], values / 65535.0, rtol=1e-6)  # not clipped at 255
    assert main(["denoise", str(tiny_run), str(source)]) == 0
    with Image.open(tmp_path / "deep.denoised.png") as out:
        assert out.mode.startswith("I;16")
        pixels = np.asarray(out)
    assert pixels.dtype == np.uint16 and (pixels == 65535).mean() < 0.5 and len(np.unique(pixels)) > 256


@pytest.mark.parametrize("mode", ["RGBA", "LA", "RGB", "P"])
def test_colour_denoised_per_channel_and_alpha_kept(tmp_path, tiny_run, tiny_dataset, mode):
    from daelab.runs import load_model
    model, _ = load_model(tiny_run)
    rng = np.random.default_rng(0)
    gray = tiny_dataset.test_images[:3]                                          # three 28x28 channels
    alpha = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    layers = {"RGBA": [*gray, alpha], "LA": [gray[0], alpha], "RGB": list(gray), "P": [gray[0]]}[mode]
    picture = Image.fromarray(np.dstack(layers).squeeze())
    if mode == "P":
        picture = picture.convert("P")
        picture.info["transparency"] = 0
    source = tmp_path / "pic.png"
    picture.save(source, transparency=0) if mode == "P" else picture.save(source)
    denoise_files(model, [source])
    with Image.open(tmp_path / "pic.denoised.png") as out:
        assert out.mode == {"P": "RGBA"}.get(mode, mode) and out.size == (28, 28)
        pixels = np.asarray(out)
    if mode in ("RGBA", "LA"):
        np.testing.assert_array_equal(pixels[..., -1], alpha)                   # carried through unchanged
    if mode in ("RGBA", "RGB"):
        for channel in range(3):                                                 # each channel alone, as gray
            alone = tmp_path / f"c{channel}.npy"
            np.save(alone, gray[channel])
            denoise_files(model, [alone])
            expected = np.load(tmp_path / f"c{channel}.denoised.npy").astype(int)
            assert np.abs(pixels[..., channel].astype(int) - expected).max() <= 1


# --------------------------------------------------- 10: one-line errors where tracebacks came out
def _deny_writes_into(monkeypatch, directory):
    """A read-only directory, also for root (whom chmod does not stop): what the kernel would say."""
    directory.chmod(0o555)
    real_access, real_mkstemp = os.access, tempfile.mkstemp
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if os.fspath(path) == os.fspath(directory)
                        and mode & os.W_OK else real_access(path, mode, **kw))

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and os.fspath(dir) == os.fspath(directory):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(directory))
        return real_mkstemp(*args, dir=dir, **kwargs)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_read_only_output_directory_is_one_line_and_writes_nothing(tmp_path, tiny_run, tiny_dataset, capsys,
                                                                   monkeypatch):
    source, out = tmp_path / "x.npy", tmp_path / "locked"
    np.save(source, tiny_dataset.test_images[:2])
    out.mkdir()
    _deny_writes_into(monkeypatch, out)
    try:
        assert main(["denoise", str(tiny_run), str(source), "--out", str(out)]) == 2
        assert "cannot write into" in one_line(capsys) and files_in(out) == []
    finally:
        out.chmod(0o755)


def test_disk_full_while_writing_is_exit_1_and_keeps_inputs(tmp_path, tiny_run, tiny_dataset, capsys, monkeypatch):
    import daelab.denoise as module
    first, second = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(first, tiny_dataset.test_images[0])
    np.save(second, tiny_dataset.test_images[1])
    before = second.read_bytes()
    real_write, calls = module.atomic_write, []

    def full(path, write):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, write)
    monkeypatch.setattr(module, "atomic_write", full)
    assert main(["denoise", str(tiny_run), str(first), str(second)]) == 1
    assert "No space left" in one_line(capsys)
    assert second.read_bytes() == before and files_in(tmp_path) == ["a.denoised.npy", "a.npy", "b.npy"]


@pytest.mark.parametrize("side", [13_000, 40_000])  # above Pillow's warning and above its own bomb limit
def test_decompression_bomb_png_is_refused_in_one_line(tmp_path, tiny_run, make_png, capsys, side):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(make_png(side, side, 8, 0, idat=zlib.compress(b"\0" * 1024)))
    assert main(["denoise", str(tiny_run), str(bomb)]) == 2
    one_line(capsys)
    with pytest.raises(DataError, match="DAELAB_MAX_PIXELS"):
        read_image_file(bomb)  # any size (a conv model): refused by the pixel cap, not by the model's size


def _npy_header(shape, descr="<f4") -> bytes:
    import io
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["npy", "npz"])
def test_header_claiming_1e13_values_is_refused_before_allocating(tmp_path, tiny_run, capsys, kind):
    payload = _npy_header((10**13,)) + b"\0" * 64
    path = tmp_path / f"huge.{kind}"
    if kind == "npy":
        path.write_bytes(payload)
    else:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("x.npy", payload)
    assert main(["denoise", str(tiny_run), str(path)]) == 2
    assert "huge" in one_line(capsys)
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 4, 4), np.uint8), y=np.zeros(2, int))
    with zipfile.ZipFile(tmp_path / "d.npz", "a") as archive:
        archive.writestr("x2.npy", payload)
    with pytest.raises(DataError, match="over the"):
        load_npz(tmp_path / "d.npz", "x2", "y")


@pytest.mark.parametrize("case", ["truncated", "trailing", "object"])
def test_npy_header_must_match_the_file(tmp_path, case):
    path = tmp_path / "a.npy"
    if case == "object":
        np.save(path, np.array([None, 1], dtype=object), allow_pickle=True)
    else:
        path.write_bytes(_npy_header((4, 4)) + b"\0" * (60 if case == "truncated" else 68))
    with pytest.raises(DataError, match="pickled" if case == "object" else "holds"):
        load_npy(path)


def test_directory_as_an_input_file_is_one_line(tmp_path, tiny_run, tiny_dataset, capsys):
    folder = tmp_path / "pictures.png"
    folder.mkdir()
    np.save(tmp_path / "x.npy", tiny_dataset.test_images[0])
    assert main(["denoise", str(tiny_run), str(folder)]) == 2
    assert "is a directory" in one_line(capsys)
    assert main(["denoise", str(tiny_run), str(tmp_path / "x.npy"), "--reference", str(folder)]) == 2
    assert "is a directory" in one_line(capsys)
    for reader in (read_idx, load_npy, load_npz):
        with pytest.raises(DataError, match="is a directory"):
            reader(folder)


# ------------------------------------------------------------------ 11: no input costs more than it declares
def _gzip_of_zeros(path, header: bytes, n_zeros: int) -> None:
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: a gzip wrapper
    with open(path, "wb") as handle:
        handle.write(deflate.compress(header))
        block = bytes(1 << 20)
        for _ in range(n_zeros >> 20):
            handle.write(deflate.compress(block))
        handle.write(deflate.compress(bytes(n_zeros % (1 << 20))) + deflate.flush())


def _traced_peak(call) -> int:
    tracemalloc.start()
    try:
        call()
    except DataError:
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def test_read_idx_holds_the_payload_once(tmp_path):
    n = 24 << 20
    path = tmp_path / "ok.idx.gz"
    _gzip_of_zeros(path, struct.pack(">HBB", 0, 0x08, 1) + struct.pack(">I", n), n)
    assert _traced_peak(lambda: read_idx(path)) < 1.3 * n


def test_gzip_whose_header_lies_costs_only_what_it_claims(tmp_path):
    claimed = 24 << 20  # the stream inflates to four times that
    path = tmp_path / "liar.idx.gz"
    _gzip_of_zeros(path, struct.pack(">HBB", 0, 0x08, 1) + struct.pack(">I", claimed), 4 * claimed)
    with pytest.raises(DataError, match="trailing bytes"):
        read_idx(path)
    assert _traced_peak(lambda: read_idx(path)) < 1.3 * claimed


def test_gzip_claiming_more_than_deflate_can_hold_is_refused_unread(tmp_path):
    path = tmp_path / "small.idx.gz"
    path.write_bytes(gzip.compress(struct.pack(">HBB", 0, 0x08, 1) + struct.pack(">I", 1 << 31) + bytes(100)))
    with pytest.raises(DataError, match="more than a .*gzip can hold"):
        read_idx(path)
    assert _traced_peak(lambda: read_idx(path)) < 1 << 20


def test_big_png_is_refused_by_its_header_not_after_decoding(tmp_path, make_png):
    """Pillow allocates outside tracemalloc's view: measure the peak RSS of a fresh process instead."""
    side = 9_000  # 81 Mpx of zeros, over the 64 Mi cap: a ~80 KB file that decodes to 81 MB
    path = tmp_path / "wide.png"
    stream = zlib.compressobj(9)
    row = b"\0" * (side + 1)
    path.write_bytes(make_png(side, side, 8, 0, idat=b"".join(stream.compress(row) for _ in range(side))
                              + stream.flush()))
    script = textwrap.dedent(f"""
        import resource, sys
        from daelab.denoise import read_image_file
        from daelab.errors import DataError
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for shape in ((28, 28), None):  # the MLP's size, then any size under the pixel cap
            try:
                read_image_file({str(path)!r}, shape)
                sys.exit("accepted")
            except DataError:
                pass
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) < 40_000  # kB: nothing near the 81 MB the picture decodes to
