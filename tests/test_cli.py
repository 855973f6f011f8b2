"""The `napari-cosdd` command line, driven as a user would: every subcommand and its error paths."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile

from napari_cosdd.cli import ProgressBar, main, training_line
from napari_cosdd.engine.model_file import load_model, save_model
from napari_cosdd.synthetic import make_dataset
from napari_cosdd.engine.train import TrainingEvent

TINY = ["--preset", "tiny", "--crop-size", "32", "--val-every", "10", "--device", "cpu"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """An ImageJ TIFF stack (TYX, calibrated), two .npy frames and a 2-channel TIFF."""
    d = tmp_path_factory.mktemp("cli")
    noisy, _ = make_dataset("stripes", n_images=3, shape=(64, 64), seed=2)
    tifffile.imwrite(d / "stack.tif", noisy, imagej=True, metadata={"axes": "TYX", "unit": "um"},
                     resolution=(4.0, 4.0))
    for i in range(2):
        np.save(d / f"frame{i}.npy", noisy[i])
    tifffile.imwrite(d / "twochannel.tif", np.stack([noisy[0], noisy[1]]), imagej=True, metadata={"axes": "CYX"})
    return d


@pytest.fixture(scope="module")
def cli_model(data_dir, tiny_model):
    """A tiny model file (the session's tiny model, trained on stripes along x)."""
    path = data_dir / "tiny.cosdd"
    save_model(tiny_model, path)
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("napari-cosdd: error")]
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------ train


def test_train_picks_the_orientation_and_writes_a_model(capsys, data_dir, tmp_path):
    out = tmp_path / "m.cosdd"
    code, _, err = run(capsys, "train", data_dir / "stack.tif", "--out", out, "--steps", 12, *TINY)
    assert code == 0, err
    assert "orientation: x" in err and "model written" in err
    model = load_model(out)
    assert model.config.orientation == "x"
    assert model.history[-1]["steps"] == 12
    assert model.extra["axes"] == "TYX"


def test_a_collapse_is_a_line_in_the_log_then_exit_1_and_no_model(capsys, data_dir, tmp_path, collapsed_latents):
    """The guard's fresh start is one line of the log; the final collapse ends the command with status 1,
    its advice, and no model file (a model whose latents died would only give flat images)."""
    out = tmp_path / "m.cosdd"
    code, _, err = run(capsys, "train", data_dir / "stack.tif", "--out", out, "--steps", 200,
                       *TINY[:-4], "--val-every", "4", "--device", "cpu")
    assert code == 1
    assert "starting again from fresh weights" in err
    assert "training failed: Training stopped: the latents collapsed" in err and "orientation" in err
    assert not out.exists()


def test_train_clips_outliers_of_a_uint16_stack(capsys, tmp_path):
    """The command of issue #12 that ended in a raw traceback: uint16 TYX counts with --clip-outliers."""
    noisy, _ = make_dataset("stripes", n_images=3, shape=(64, 64), seed=5)
    path = tmp_path / "n.tif"
    tifffile.imwrite(path, np.clip(100 + 400 * noisy, 0, 65535).astype(np.uint16), imagej=True,
                     metadata={"axes": "TYX"})
    out = tmp_path / "m.cosdd"
    code, _, err = run(capsys, "train", path, "--out", out, "--steps", 3, *TINY, "--orientation", "x",
                       "--clip-outliers", "0.1", "99.9")
    assert code == 0, err
    assert "clipped to [" in err and load_model(out).history[-1]["steps"] == 3


def test_train_takes_glob_patterns_and_engine_settings(capsys, data_dir, tmp_path):
    out = tmp_path / "m.cosdd"
    code, _, err = run(capsys, "train", str(data_dir / "frame*.npy"), "--out", out, "--steps", 4,
                       "--orientation", "none", "--mixture-components", "2", "--learning-rate", "1e-3",
                       "--no-direct-denoiser", *TINY)
    assert code == 0, err
    model = load_model(out)
    assert model.config.mixture_components == 2 and model.direct_denoiser is None
    assert model.config.orientation == "none"
    assert len(model.extra["images"]) == 2


def test_resume_continues_and_refuses_another_orientation(capsys, data_dir, cli_model, tmp_path):
    out = tmp_path / "more.cosdd"
    code, _, err = run(capsys, "train", data_dir / "stack.tif", "--resume", cli_model, "--out", out,
                       "--steps", 3, "--orientation", "y", *TINY)
    assert code == 2
    assert "along 'x'" in one_line_error(err) and not out.exists()
    code, _, err = run(capsys, "train", data_dir / "stack.tif", "--resume", cli_model, "--out", out,
                       "--steps", 3, *TINY)
    assert code == 0, err
    assert len(load_model(out).history) == len(load_model(cli_model).history) + 1


@pytest.mark.parametrize(
    "extra, words, status",
    [
        (["missing.tif"], "no such file", 1),
        (["nomatch*.tif"], "no file matches", 1),
        (["{d}/stack.tif", "--axes", "ZTYX"], "names 4 axes", 2),
        (["{d}/stack.tif", "--axes", "TQX"], "letters", 2),
        (["{d}/stack.tif", "--steps", "0x"], "invalid int", 2),
        (["{d}/stack.tif", "--preset", "huge"], "unknown preset", 2),
        (["{d}/stack.tif", "--crop-size", "4"], "crop_size", 2),
        (["{d}/stack.tif", "--optimizer", "sgd"], "invalid choice", 2),
    ],
)
def test_train_errors_are_one_line_and_their_status_says_whose(capsys, data_dir, tmp_path, extra, words, status):
    """Files that are missing or cannot be used: status 1. Flags that cannot work: status 2, with the usage."""
    argv = [a.replace("{d}", str(data_dir)) for a in extra]
    code, _, err = run(capsys, "train", *argv, "--out", tmp_path / "m.cosdd")
    assert code == status
    assert words in one_line_error(err)
    assert ("usage: napari-cosdd train" in err) == (status == 2)
    assert "Traceback" not in err


def test_an_unexpected_error_is_short_with_status_3_and_debug_shows_the_traceback(capsys, data_dir, monkeypatch):
    from napari_cosdd import cli

    def broken(args, say):
        raise RuntimeError("something inside broke")

    monkeypatch.setitem(cli.COMMANDS, "autocorr", broken)
    code, _, err = run(capsys, "autocorr", data_dir / "frame0.npy")
    assert code == 3 and "unexpected error (RuntimeError: something inside broke)" in err and "--debug" in err
    assert "Traceback" not in err
    with pytest.raises(RuntimeError, match="inside broke"):
        main(["autocorr", str(data_dir / "frame0.npy"), "--debug"])


def test_train_refuses_to_write_the_model_over_an_input(capsys, data_dir):
    before = (data_dir / "frame0.npy").read_bytes()
    code, _, err = run(capsys, "train", data_dir / "frame0.npy", "--out", data_dir / "frame0.npy", *TINY)
    assert code == 2 and "input" in one_line_error(err)
    assert (data_dir / "frame0.npy").read_bytes() == before


def test_ctrl_c_stops_training_and_saves_the_best_model(data_dir, tmp_path):
    out = tmp_path / "stopped.cosdd"
    proc = subprocess.Popen(
        [sys.executable, "-m", "napari_cosdd", "train", str(data_dir / "stack.tif"), "--out", str(out),
         "--steps", "100000", "--threads", "1", *TINY],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    for line in proc.stderr:  # wait until training has started
        lines.append(line)
        if line.startswith("split:"):
            break
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    assert proc.returncode == 0, "".join(lines) + rest
    assert "stopped on request" in rest and "model written" in rest
    history = load_model(out).history[-1]
    assert history["reason"] == "stopped on request" and 0 < history["steps"] < 100000


# ------------------------------------------------------------------ denoise


def test_denoise_direct_keeps_axes_calibration_and_dtype(capsys, data_dir, cli_model, tmp_path):
    code, _, err = run(capsys, "denoise", cli_model, data_dir / "stack.tif", "--out", tmp_path)
    assert code == 0, err
    out = tmp_path / "stack_cosdd_direct.tif"
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].axes == "TYX" and tif.series[0].shape == (3, 64, 64)
        assert tif.series[0].dtype == np.float32
        assert tif.imagej_metadata["unit"] == "um"
        assert tif.pages[0].tags["XResolution"].value == (4, 1)


def test_denoise_sample_writes_every_requested_output(capsys, data_dir, cli_model, tmp_path):
    code, _, err = run(capsys, "denoise", cli_model, data_dir / "frame0.npy", data_dir / "frame1.npy",
                       "--out", tmp_path, "--method", "sample", "--samples", 3, "--variance", "--median",
                       "--keep-samples", "--tile", 32)
    assert code == 0, err
    for name in ("mean", "variance", "std", "median"):
        assert tifffile.imread(tmp_path / f"frame1_cosdd_{name}.tif").shape == (64, 64)
    samples = tifffile.imread(tmp_path / "frame0_cosdd_samples.tif")
    assert samples.shape == (3, 64, 64)
    np.testing.assert_allclose(samples.mean(0), tifffile.imread(tmp_path / "frame0_cosdd_mean.tif"), atol=1e-4)
    np.testing.assert_allclose(tifffile.imread(tmp_path / "frame0_cosdd_std.tif") ** 2,
                               tifffile.imread(tmp_path / "frame0_cosdd_variance.tif"), rtol=1e-4, atol=1e-8)


def test_denoise_to_ome_zarr_and_back(capsys, data_dir, cli_model, tmp_path, monkeypatch):
    """A big TIFF (here: any file, the size limit lowered) is read lazily and denoised into OME-Zarr,
    which the command line reads back as an input, axes and pixel size included."""
    import zarr

    from napari_cosdd.engine import io

    monkeypatch.setattr(io, "LAZY_BYTES", 0)  # every file counts as large: memory-mapped, never read whole
    code, _, err = run(capsys, "denoise", cli_model, data_dir / "stack.tif", "--out", tmp_path / "z",
                       "--format", "ome-zarr", "--method", "sample", "--samples", 2, "--variance",
                       "--keep-samples", "--tile", 32)
    assert code == 0, err
    for name in ("mean", "variance", "std", "samples"):
        assert (tmp_path / "z" / f"stack_cosdd_{name}.ome.zarr").is_dir(), name
    mean = zarr.open_array(str(tmp_path / "z" / "stack_cosdd_mean.ome.zarr" / "0"), mode="r")
    assert mean.shape == (3, 64, 64)
    f = io.read_image(tmp_path / "z" / "stack_cosdd_mean.ome.zarr")
    assert f.axes == "TYX" and f.resolution == pytest.approx((4.0, 4.0))
    samples = zarr.open_array(str(tmp_path / "z" / "stack_cosdd_samples.ome.zarr" / "0"), mode="r")
    np.testing.assert_allclose(samples[:].mean(0), mean[:], atol=1e-4)
    # the OME-Zarr output is an input like any other (and its folder is not scanned as a folder of files)
    code, _, err = run(capsys, "denoise", cli_model, tmp_path / "z" / "stack_cosdd_mean.ome.zarr",
                       "--out", tmp_path / "again")
    assert code == 0, err
    with tifffile.TiffFile(tmp_path / "again" / "stack_cosdd_mean_cosdd_direct.tif") as tif:
        assert tif.series[0].axes == "TYX" and tif.series[0].shape == (3, 64, 64)
    # a second run finds the outputs complete and skips the file
    code, _, err = run(capsys, "denoise", cli_model, data_dir / "stack.tif", "--out", tmp_path / "z",
                       "--format", "ome-zarr", "--method", "sample", "--samples", 2, "--variance",
                       "--keep-samples")
    assert code == 0 and "already there, skipped" in err


def test_calibrate_writes_a_model_whose_std_is_calibrated(capsys, cli_model, tmp_path):
    noisy, clean = make_dataset("stripes", n_images=2, shape=(64, 64), seed=2)
    tifffile.imwrite(tmp_path / "noisy.tif", noisy, imagej=True, metadata={"axes": "TYX"})
    tifffile.imwrite(tmp_path / "reference.tif", clean, imagej=True, metadata={"axes": "TYX"})
    out = tmp_path / "calibrated.cosdd"
    code, _, err = run(capsys, "calibrate", cli_model, tmp_path / "noisy.tif", "--reference",
                       tmp_path / "reference.tif", "--out", out, "--samples", 3, "--device", "cpu")
    assert code == 0, err
    assert "ENCE" in err and "RMV" in err and "calibrated model written" in err
    model = load_model(out)
    assert model.calibration is not None and model.calibration.pixels == 2 * 64 * 64
    assert "noisy.tif" in model.calibration.fitted_on
    assert load_model(cli_model).calibration is None, "the given model file is left as it was"

    code, _, err = run(capsys, "denoise", out, tmp_path / "noisy.tif", "--out", tmp_path / "res",
                       "--method", "sample", "--samples", 2, "--variance", "--device", "cpu")
    assert code == 0 and "the std is calibrated" in err
    code, _, err = run(capsys, "denoise", cli_model, tmp_path / "noisy.tif", "--out", tmp_path / "res2",
                       "--method", "sample", "--samples", 2, "--variance", "--device", "cpu")
    assert code == 0 and "not calibrated" in err


def test_calibrate_mistakes_are_said_with_their_status(capsys, cli_model, tmp_path):
    noisy, clean = make_dataset("stripes", n_images=2, shape=(64, 64), seed=2)
    tifffile.imwrite(tmp_path / "noisy.tif", noisy, imagej=True, metadata={"axes": "TYX"})
    tifffile.imwrite(tmp_path / "small.tif", clean[:, :32], imagej=True, metadata={"axes": "TYX"})
    before = cli_model.read_bytes()
    code, _, err = run(capsys, "calibrate", cli_model, tmp_path / "noisy.tif", "--reference",
                       tmp_path / "noisy.tif", "--out", cli_model)
    assert code == 2 and "another file" in err and cli_model.read_bytes() == before
    code, _, err = run(capsys, "calibrate", cli_model, tmp_path / "noisy.tif", "--out", tmp_path / "m.cosdd")
    assert code == 2 and "--reference" in err
    code, _, err = run(capsys, "calibrate", cli_model, tmp_path / "noisy.tif", "--reference", tmp_path / "small.tif",
                       "--out", tmp_path / "m.cosdd", "--samples", 2, "--device", "cpu")
    assert code == 1 and "same field of view" in err and not (tmp_path / "m.cosdd").exists()


def test_export_writes_a_bioimageio_zip_and_refuses_other_names(capsys, data_dir, cli_model, tmp_path):
    import json
    import zipfile

    code, _, err = run(capsys, "export", cli_model, tmp_path / "m.zip", "--image", data_dir / "stack.tif",
                       "--name", "my denoiser", "--author", "A. Tester")
    assert code == 0 and "bioimage.io" in err, err
    with zipfile.ZipFile(tmp_path / "m.zip") as zf:
        rdf = json.loads(zf.read("rdf.yaml"))
    assert rdf["name"] == "my denoiser" and rdf["authors"] == [{"name": "A. Tester"}]
    code, _, err = run(capsys, "export", cli_model, tmp_path / "m.tif", "--image", data_dir / "stack.tif")
    assert code == 2 and ".zip" in one_line_error(err)


def test_denoise_never_overwrites_an_input(capsys, data_dir, cli_model, tmp_path):
    victim = tmp_path / "a_cosdd_direct.tif"
    source = tmp_path / "a.tif"
    tifffile.imwrite(source, np.load(data_dir / "frame0.npy"))
    tifffile.imwrite(victim, np.ones((64, 64), np.float32))
    before = victim.read_bytes()
    code, _, err = run(capsys, "denoise", cli_model, source, victim, "--out", tmp_path)
    assert code == 2 and "input" in one_line_error(err)
    assert victim.read_bytes() == before


def test_a_folder_batch_skips_a_bad_file_resumes_and_says_whether_all_succeeded(capsys, data_dir, cli_model,
                                                                                 tmp_path):
    folder = tmp_path / "acquisitions"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", np.load(data_dir / "frame0.npy"))
    np.save(folder / "b.npy", np.load(data_dir / "frame1.npy"))
    (folder / "c.tif").write_bytes(b"not a tiff at all")
    code, _, err = run(capsys, "denoise", cli_model, folder, "--out", folder)
    assert code == 1, err
    assert "[3/3] c.tif: skipped" in err and "1 of 3 could not be denoised: c.tif" in one_line_error(err)
    assert (folder / "a_cosdd_direct.tif").exists() and (folder / "b_cosdd_direct.tif").exists()
    first = (folder / "a_cosdd_direct.tif").stat().st_mtime_ns

    (folder / "c.tif").unlink()
    tifffile.imwrite(folder / "c.tif", np.load(data_dir / "frame1.npy"))
    code, _, err = run(capsys, "denoise", cli_model, folder, "--out", folder)
    assert code == 0, err
    assert "left out 2 earlier output(s)" in err, "the first run's results are not read as inputs"
    assert "[1/3] a.tif: outputs already there, skipped" in err and "1 file(s) denoised, 2 already done" in err
    assert (folder / "a_cosdd_direct.tif").stat().st_mtime_ns == first and (folder / "c_cosdd_direct.tif").exists()
    code, _, err = run(capsys, "denoise", cli_model, folder / "*.tif", "--out", folder, "--overwrite")
    assert code == 0 and "2 file(s) denoised" in err


def test_denoise_errors(capsys, data_dir, cli_model, tmp_path):
    code, _, err = run(capsys, "denoise", cli_model, data_dir / "twochannel.tif", "--out", tmp_path)
    assert code == 1 and "channel" in one_line_error(err)
    broken = tmp_path / "broken.cosdd"
    broken.write_bytes(cli_model.read_bytes()[:500])
    code, _, err = run(capsys, "denoise", broken, data_dir / "frame0.npy", "--out", tmp_path)
    assert code == 1 and "model file" in one_line_error(err)
    code, _, err = run(capsys, "denoise", cli_model, data_dir / "frame0.npy", "--out", data_dir / "frame0.npy")
    assert code == 2 and "is a file" in one_line_error(err)


# ------------------------------------------------------------------ autocorr, check-noise, demo


def test_autocorr_prints_the_suggestion_and_writes_the_map(capsys, data_dir, tmp_path):
    code, out, err = run(capsys, "autocorr", data_dir / "stack.tif", "--max-lag", 6, "--out", tmp_path / "ac.tif")
    assert code == 0, err
    assert "suggested orientation: x" in out and "profile along y" in out
    ac = tifffile.imread(tmp_path / "ac.tif")
    assert ac.shape == (13, 13) and ac[6, 6] == pytest.approx(1.0)


def test_autocorr_with_a_region_and_a_bad_region(capsys, data_dir):
    code, out, _ = run(capsys, "autocorr", data_dir / "frame0.npy", "--region", "0:32,0:64")
    assert code == 0 and "region" in out
    code, _, err = run(capsys, "autocorr", data_dir / "frame0.npy", "--region", "0:32")
    assert code == 2 and "start:stop" in one_line_error(err)


def test_check_noise_compares_and_writes_the_generated_image(capsys, data_dir, cli_model, tmp_path):
    out = tmp_path / "gen.tif"
    code, text, err = run(capsys, "check-noise", cli_model, data_dir / "frame0.npy", "--out", out)
    assert code == 0, err
    assert "real" in text and "generated" in text and "variance" in text
    generated = tifffile.imread(out)
    assert generated.shape == (64, 64) and np.isfinite(generated).all()
    code, _, err = run(capsys, "check-noise", cli_model, data_dir / "frame0.npy", "--out", data_dir / "frame0.npy")
    assert code == 2 and "input" in one_line_error(err)


def test_demo_headless_trains_and_writes_results(capsys, tmp_path):
    code, out, err = run(capsys, "demo", "--headless", "--minutes", 0.05, "--preset", "tiny", "--out", tmp_path,
                         "--device", "cpu")
    assert code == 0, err
    assert "PSNR noisy" in out
    for name in ("noisy", "direct", "mean20", "std20"):
        assert tifffile.imread(tmp_path / f"{name}.tif").shape == (2, 256, 256)
    assert load_model(tmp_path / "stripes.cosdd").config.orientation == "x"


@pytest.mark.parametrize("command", ["train", "denoise", "calibrate", "export", "autocorr", "check-noise", "demo"])
def test_help_everywhere(capsys, command):
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    assert command in capsys.readouterr().out


def test_no_command_prints_help_and_status_2(capsys):
    assert main([]) == 2
    assert "train" in capsys.readouterr().out


def test_progress_line_names_losses_and_time_left():
    ev = TrainingEvent("validation", step=50, total_steps=200, epoch=1.0, elapsed=30.0, eta=90.0,
                       train={"elbo": 1.5, "kl": 0.2, "nll": 1.3}, val={"elbo": 1.4})
    line = training_line(ev)
    assert "step 50/200" in line and "1:30 left" in line and "val elbo 1.4000" in line


def test_progress_bar_without_a_terminal_writes_plain_lines(tmp_path):
    with open(tmp_path / "log.txt", "w") as stream:
        bar = ProgressBar(stream, every=0.0)
        bar.message("starting")
        bar.update(0.5, "half")
        bar.update(1.0, "all")
        bar.close()
        quiet = ProgressBar(stream, every=3600.0)
        quiet.update(0.1, "first")   # written: nothing was yet
        quiet.update(0.6, "skipped")  # within the hour: not written
        quiet.update(0.9, "last")
        quiet.close()                 # the last state is written once at the end
    text = (tmp_path / "log.txt").read_text().splitlines()
    assert text == ["starting", " 50% half", "100% all", " 10% first", " 90% last"]


def test_progress_bar_on_a_terminal_is_tqdm(tmp_path):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    bar = ProgressBar(stream)
    bar.update(0.25, "a quarter")
    bar.message("a message")
    bar.close()
    text = stream.getvalue()
    assert "a message\n" in text and "a quarter" in text
    assert " 25% |######" in text and "\r" in text, "tqdm redraws its bar in place"
