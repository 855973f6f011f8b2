"""The real-data matrix for our engine: train on each cell as a user would, score, store, tabulate.

    python benchmarks/real_matrix.py run --cells nuclei2d_camera moon_x --minutes 10   # default setup
    python benchmarks/real_matrix.py run --cells all --minutes 10        # the whole matrix (hours)
    python benchmarks/real_matrix.py run --quick                          # 2 cells, 3 minutes: day to day
    python benchmarks/real_matrix.py run --cells moon_x --minutes 3 --tag adamax \\
        --train-override '{"optimizer": "adamax"}'                        # an ablation, stored apart
    python benchmarks/real_matrix.py run --cells moon_x --tag calibration   # a second training of a cell
                                                           # whose paired run kept no posterior (issue #14)
    python benchmarks/real_matrix.py table                                # print it, write docs/benchmarks.md

A cell (benchmarks/realdata.py) is 16 noisy uint16 frames; training sees all of them, with the
orientation that the engine's noise autocorrelation suggests, the default preset and 2 threads. The
first 6 frames are scored: PSNR of 1 posterior sample, the mean of 20 and the Direct Denoiser against the
clean frames, plus the KL per level (finest first, nats per pixel), steps and seconds. Each cell's
figures go to benchmarks/results/<tag>/<cell>.json with the commit and settings that made them, so the
matrix grows across sessions; a cell already measured is skipped unless --rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time

import numpy as np
import torch

import realdata as R
from napari_cosdd.engine import config as C
from napari_cosdd.engine.autocorrelation import noise_autocorrelation
from napari_cosdd.engine.calibration import calibrate, coverage, reliability
from napari_cosdd.engine.inference import denoise
from napari_cosdd.engine.model_file import save_model
from napari_cosdd.engine.train import Trainer

QUICK_CELLS = ["nuclei2d_camera", "moon_x"]
QUICK_MINUTES = 3.0
BEGIN, END = "<!-- real-data matrix: begin -->", "<!-- real-data matrix: end -->"
CAL_BEGIN, CAL_END = "<!-- calibration: begin -->", "<!-- calibration: end -->"
PEER_BEGIN, PEER_END = "<!-- peers: begin -->", "<!-- peers: end -->"
HELD_BEGIN, HELD_END = "<!-- held-out: begin -->", "<!-- held-out: end -->"
# Trained models and the scored posterior arrays are kept outside the repository (tens of MB per cell), so
# that a new uncertainty or output analysis can be run on a cell without training it again.
CACHE = os.environ.get("COSDD_BENCH_CACHE", os.path.expanduser("~/.cache/napari-cosdd/bench"))
# Calibration figures for cells whose paired run kept no posterior come from a second training stored here.
CAL_TAG = "calibration"
# The folder of the engine's current default: `run` without a tag or an override stores there, `table`
# reads it. A change of the default in the engine starts a new folder (and the matrix again); the older
# folders stay as what they measured. abl23 is the default since commit 9ecc77d (bf16 on CPUs that have it,
# no plateau rule); `ours` holds the default before it.
DEFAULT_TAG = "abl23-default"
# The reference's folders, the first that has a cell wins: `ref23-reference` reran two cells on the kind of
# host the default was measured on, `reference` is the matrix of 2026-12-02/03.
REF_TAGS = ("ref23-reference", "reference")
# The held-out images (realdata.HELD_OUT), measured with the default of DEFAULT_TAG and the reference.
HELD_TAG, HELD_REF_TAGS = "heldout-default", ("heldout-reference",)
CAL_PLOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "images", "calibration_matrix.png")


def calibration_figures(std: np.ndarray, mean: np.ndarray, clean: np.ndarray) -> dict:
    """Issue #14's figures: the posterior std of 20 samples as an error bar of their mean. The fits are
    made on the first half of the scored frames and judged on the other half: one scale (denoiSplit's),
    and under "floor_fit" a scale with a floor added in quadrature (the engine's default with a reference)."""
    half = len(clean) // 2
    fit = (std[:half], mean[:half], clean[:half])
    held = (std[half:], mean[half:], clean[half:])
    scale = calibrate(*fit, floor=False).scales[0]
    with_floor = calibrate(*fit, floor=True)
    fs, ff = with_floor.scales[0], with_floor.floors[0]
    before = reliability(*held)
    return {"scale": scale, "ence_before": before.ence, "ence_after": before.scaled(scale).ence,
            "coverage_before": coverage(*held), "coverage_after": coverage(*held, scale=scale),
            "bins_before": before.to_dict(), "bins_after": before.scaled(scale).to_dict(),
            "floor_fit": {"scale": fs, "floor": ff, "ence_after": before.scaled(fs, ff).ence,
                          "coverage_after": coverage(*held, scale=fs, floor=ff),
                          "bins_after": before.scaled(fs, ff).to_dict()},
            "fitted_on": f"frames 0-{half - 1}", "held_out": f"frames {half}-{len(clean) - 1}"}


def cmd_recalibrate(args) -> None:
    """Recompute the calibration figures of cells whose posterior arrays are in the cache (no training)."""
    for (image, noise), o in sorted(R.load_results(args.tag).items()):
        cached = os.path.join(CACHE, args.tag, f"{image}_{noise}.npz")
        if not os.path.exists(cached):
            continue
        arrays = np.load(cached)
        o["calibration"] = calibration_figures(arrays["std20"], arrays["mean20"], arrays["clean"])
        path = R._result_path(args.tag, image, noise)
        with open(path, "w") as f:
            json.dump(o, f, indent=1)
        c = o["calibration"]
        print(f"{image}_{noise}: scale {c['scale']:.2f} ENCE {c['ence_before']:.2f} -> {c['ence_after']:.2f}; "
              f"scale {c['floor_fit']['scale']:.2f} floor {c['floor_fit']['floor']:.3g} -> "
              f"{c['floor_fit']['ence_after']:.2f}  ({os.path.relpath(path)})")


def run_cell(cell: R.Cell, args) -> dict:
    orientation = noise_autocorrelation(cell.noisy, "SYX").orientation
    settings = dict(max_minutes=args.minutes, max_steps=args.steps, threads=args.threads, device=args.device,
                    seed=args.seed)
    settings.update(json.loads(args.train_override))
    cfg = C.TrainConfig(**settings)
    trainer = Trainer(cell.noisy, "SYX", preset=args.preset, orientation=orientation, train_config=cfg,
                      **json.loads(args.override))
    messages = []
    t0 = time.perf_counter()
    for ev in trainer.fit():
        if ev.kind == "validation" and ev.val:
            levels = " ".join(f"{ev.val[k]:.4f}" for k in sorted(ev.val) if re.fullmatch(r"kl_\d+", k))
            print(f"  step {ev.step:5d} {ev.elapsed:5.0f}s lr {ev.lr:.1e}  val elbo {ev.val['elbo']:.4f}  "
                  f"kl {ev.val['kl']:.4f} [{levels}]  signal {ev.val['signal']:.4f}", flush=True)
        elif ev.kind == "warning":
            messages.append(ev.message)
            print(f"  {ev.kind}: {ev.message}", flush=True)
    seconds = time.perf_counter() - t0
    model = trainer.model
    val = trainer.validate()
    model.eval()
    x, clean = cell.noisy[:R.EVAL_FRAMES], cell.clean[:R.EVAL_FRAMES]
    direct_result = denoise(model, x, "SYX", method="direct", device=args.device)
    one = denoise(model, x, "SYX", method="sample", n_samples=1, variance=False, device=args.device, seed=1).mean
    mean20_result = denoise(model, x, "SYX", method="sample", n_samples=20, variance=True, device=args.device,
                            seed=2)
    direct, mean20 = direct_result.direct, mean20_result.mean
    keep = os.path.join(CACHE, args.tag)
    os.makedirs(keep, exist_ok=True)
    save_model(model, os.path.join(keep, f"{cell.name}.cosdd"))
    np.savez_compressed(os.path.join(keep, f"{cell.name}.npz"), clean=clean, noisy=x, direct=direct,
                        mean20=mean20, std20=mean20_result.std)
    return {
        "psnr": {"noisy": R.psnr_frames(clean, x.astype(np.float32)), "sample": R.psnr_frames(clean, one),
                 "mean20": R.psnr_frames(clean, mean20), "direct": R.psnr_frames(clean, direct)},
        # the engine's own verdict, made without the clean frames (engine/output_check.py)
        "output_check": {"direct": direct_result.check.to_dict(), "mean20": mean20_result.check.to_dict()},
        "calibration": calibration_figures(mean20_result.std, mean20, clean),
        "kl_per_level": [val[f"kl_{i}"] for i in range(model.config.levels)],
        "val_elbo": val["elbo"],
        "steps": trainer.steps_done,
        "seconds": round(seconds, 1),
        "orientation": orientation,
        "messages": messages,
        "settings": {"preset": args.preset or "default for the device", "device": R.device_name(args.device),
                     "model": model.config.to_dict(),
                     "train": cfg.to_dict()},
    }


def cmd_run(args) -> None:
    if args.quick:
        args.cells = args.cells or QUICK_CELLS
        args.minutes = QUICK_MINUTES if args.minutes is None else args.minutes
    if not args.cells:
        raise SystemExit("name the cells (--cells IMAGE_NOISE ... or all), or use --quick")
    args.minutes = 10.0 if args.minutes is None else args.minutes
    torch.set_num_threads(args.threads)
    for image, noise in R.parse_cells(args.cells):
        if not args.rerun and R.has_result(args.tag, image, noise):
            print(f"{image}_{noise}: already measured under '{args.tag}', skipped (--rerun to measure again)")
            continue
        cell = R.make_cell(image, noise, seed=0)
        print(f"{cell.name}: ours '{args.tag}', {args.minutes:g} min", flush=True)
        result = run_cell(cell, args)
        path = R.write_result(args.tag, cell, result)
        kl = " ".join(f"{k:.4f}" for k in result["kl_per_level"])
        print(f"{cell.name}: " + "  ".join(f"{k} {v:.2f}" for k, v in result["psnr"].items())
              + f"  kl [{kl}]  steps {result['steps']}  -> {os.path.relpath(path)}", flush=True)


def _fmt(record: dict | None, key: str) -> str:
    return "" if record is None else f"{record['psnr'][key]:.2f}"


def ref_best(r: dict) -> float:
    """The reference's best output: the better of its mean of 20 and its direct, the bar for our direct."""
    return max(r["psnr"]["mean20"], r["psnr"]["direct"])


def targets(o: dict, r: dict) -> str:
    """Issue #11's targets for one cell: no collapse, never below the input, direct at least the
    reference's direct and mean of 20, mean of 20 at least the reference's mean of 20."""
    p, q = o["psnr"], r["psnr"]
    missed = []
    if any("collapsed" in m for m in o.get("messages", [])) or sum(o["kl_per_level"]) < C.TrainConfig().collapse_kl:
        missed.append("collapse")
    if min(p["sample"], p["mean20"], p["direct"]) <= p["noisy"]:
        missed.append("below the input")
    if p["direct"] < ref_best(r):
        missed.append("direct")
    if p["mean20"] < q["mean20"]:
        missed.append("mean of 20")
    return "met" if not missed else "missed: " + ", ".join(missed)


def host(record: dict) -> str:
    """A short name of the machine a result was measured on: the CPU maker and its vector unit (bf16
    decides our CPU precision), e.g. "Xeon bf16", "EPYC AVX2"; "x86_64" where the first sessions
    recorded no more."""
    machine = record.get("machine", "")
    maker = next((name for name in ("EPYC", "Xeon", "NVIDIA") if name in machine), machine.split(",")[0])
    unit = "bf16" if "bf16" in machine and "no bf16" not in machine else "AVX2" if "AVX2" in machine else ""
    return f"{maker} {unit}".strip()


def load_first(tags: tuple[str, ...]) -> dict[tuple[str, str], tuple[str, dict]]:
    """Each cell's result from the first of `tags` that has it, with that tag: a rerun on a better-matched
    machine (say `ref23-reference`) takes precedence over the stored matrix (`reference`)."""
    out: dict[tuple[str, str], tuple[str, dict]] = {}
    for tag in tags:
        for cell, record in R.load_results(tag).items():
            out.setdefault(cell, (tag, record))
    return out


def table(ours_tag: str = DEFAULT_TAG, ref_tags: tuple[str, ...] = REF_TAGS,
          images: tuple[str, ...] = R.IMAGES) -> str | None:
    """The markdown table of every measured cell of `images`: ours beside the reference (from the first
    of `ref_tags` that has the cell; a tag other than the last is named beside its steps). The margin that
    issue #11 sets is against the reference's best, the better of its mean of 20 and its direct. None
    when no cell is measured."""
    ours, ref = R.load_results(ours_tag), load_first(ref_tags)
    lines = [
        "| cell | noisy | ours: 1 sample / mean of 20 / direct | KL per level (finest first) | steps, s "
        "| reference small: 1 sample / mean of 20 / direct | steps | hosts: ours, ref. "
        "| direct - ref. best | mean20 - ref. mean20 | #11 targets | output check of our direct |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for image in images:
        for noise in R.NOISES:
            o = ours.get((image, noise))
            ref_tag, r = ref.get((image, noise), (None, None))
            if o is None and r is None:
                continue
            noisy = _fmt(o or r, "noisy")
            ours_cols = ("", "", "") if o is None else (
                " / ".join(_fmt(o, k) for k in ("sample", "mean20", "direct")),
                " ".join(f"{k:.3f}" for k in o["kl_per_level"]), f"{o['steps']}, {o['seconds']:.0f}")
            ref_cols = ("", "") if r is None else (
                " / ".join(_fmt(r, k) for k in ("sample", "mean20", "direct")),
                str(r["steps"]) + ("" if ref_tag == ref_tags[-1] else f" ({ref_tag})"))
            hosts = ", ".join(host(x) if x is not None else "-" for x in (o, r))
            diff = ("", "", "")
            if o is not None and r is not None:
                diff = (f"{o['psnr']['direct'] - ref_best(r):+.2f}",
                        f"{o['psnr']['mean20'] - r['psnr']['mean20']:+.2f}", targets(o, r))
            check = ""
            if o is not None and "output_check" in o:
                c = o["output_check"]["direct"]
                check = c["verdict"] + (f", gain at most {c['gain_at_most_db']:+.1f} dB"
                                        if c["gain_at_most_db"] < 20 else "")
            lines.append(f"| {image} {noise} | {noisy} | "
                         + " | ".join(ours_cols + ref_cols + (hosts,) + diff + (check,)) + " |")
    return "\n".join(lines) if len(lines) > 2 else None


def peers_table(ours_tag: str = DEFAULT_TAG, ref_tags: tuple[str, ...] = REF_TAGS) -> str | None:
    """Ours and the reference beside structured N2V (benchmarks/structn2v_careamics.py) on the cells it
    has run; None when it has run on none."""
    n2v = R.load_results("structn2v")
    if not n2v:
        return None
    ours, ref = R.load_results(ours_tag), {cell: r for cell, (_, r) in load_first(ref_tags).items()}
    lines = ["| cell | noisy | ours: mean of 20 / direct | reference: best of mean of 20 and direct "
             "| CAREamics (mask, span): direct | its steps | our direct - its direct |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for image in R.IMAGES:
        for noise in R.NOISES:
            n = n2v.get((image, noise))
            if n is None:
                continue
            o, r = ours.get((image, noise)), ref.get((image, noise))
            setting = n["settings"]
            kind = setting["method"] + (f" ({setting['mask']}, {setting['span']})" if setting.get("span") else "")
            best = "" if r is None else f"{ref_best(r):.2f}"
            lines.append(" | ".join([
                f"| {image} {noise}", _fmt(n, "noisy"),
                "" if o is None else f"{_fmt(o, 'mean20')} / {_fmt(o, 'direct')}", best,
                f"{kind}: {_fmt(n, 'direct')}", str(n["steps"]),
                "" if o is None else f"{o['psnr']['direct'] - n['psnr']['direct']:+.2f}"]) + " |")
    return "\n".join(lines)


def calibrated_cells(ours_tag: str = DEFAULT_TAG, second_tag: str = CAL_TAG) -> list[tuple[str, str, dict, str]]:
    """(image, noise, result, source) for every cell with calibration figures, in matrix order. A cell
    whose first training kept no posterior (measured before calibration, or before the floor) takes its
    figures from a second training of ours under `second_tag` (same settings, `run --tag calibration`),
    so that the first run stays the one paired with the reference for issue #11."""
    first, second = R.load_results(ours_tag), R.load_results(second_tag)
    cells = []
    for image in R.IMAGES:
        for noise in R.NOISES:
            o, s = first.get((image, noise)), second.get((image, noise))
            complete = o is not None and "floor_fit" in o.get("calibration", {})
            if not complete and s is not None and "calibration" in s:
                cells.append((image, noise, s, f"second training, {s['steps']} steps"))
            elif o is not None and "calibration" in o:
                cells.append((image, noise, o, "the paired run"))
    return cells


def calibration_table(ours_tag: str = DEFAULT_TAG, second_tag: str = CAL_TAG) -> str:
    """Issue #14's table: the std of 20 samples as an error bar of their mean, per cell (fitted on
    frames 0-2, judged on frames 3-5): one scale, and a scale with a floor."""
    lines = ["| cell | one scale | ENCE before -> after | 68 % / 95 % cover, before -> after "
             "| scale, floor (counts) | ENCE after | 68 % / 95 % cover after | measured on |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for image, noise, o, source in calibrated_cells(ours_tag, second_tag):
        c = o["calibration"]
        cb, ca = c["coverage_before"], c["coverage_after"]
        row = (f"| {image} {noise} | {c['scale']:.2f} | {c['ence_before']:.2f} -> {c['ence_after']:.2f} "
               f"| {100 * cb['68']:.0f} / {100 * cb['95']:.0f} % -> {100 * ca['68']:.0f} / {100 * ca['95']:.0f} % ")
        f = c.get("floor_fit")
        if f is None:
            row += "| (not measured) | | |"
        else:
            cf = f["coverage_after"]
            row += (f"| {f['scale']:.2f}, {f['floor']:.3g} | {f['ence_after']:.2f} "
                    f"| {100 * cf['68']:.0f} / {100 * cf['95']:.0f} % |")
        lines.append(row + f" {source} |")
    return "\n".join(lines)


def calibration_plot(ours_tag: str = DEFAULT_TAG, path: str = CAL_PLOT, second_tag: str = CAL_TAG) -> str | None:
    """One PNG with RMSE against RMV per cell (before and after the fitted scale), drawn with pyqtgraph
    offscreen; None when no cell has calibration figures yet."""
    results = [((image, noise), o) for image, noise, o, _ in calibrated_cells(ours_tag, second_tag)]
    if not results:
        return None
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import pyqtgraph as pg
    import pyqtgraph.exporters
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    pg.setConfigOptions(background="w", foreground="k", antialias=True)
    columns = min(4, len(results))
    grid = pg.GraphicsLayoutWidget()
    grid.resize(320 * columns, 300 * ((len(results) + columns - 1) // columns))
    for i, ((image, noise), o) in enumerate(results):
        c = o["calibration"]
        before, after = c["bins_before"], c["bins_after"]
        plot = grid.addPlot(row=i // columns, col=i % columns, title=f"{image} {noise}")
        plot.setLabel("bottom", "RMV (predicted std)")
        plot.setLabel("left", "RMSE")
        top = 1.05 * max(max(before["rmv"]), max(after["rmv"]), max(after["rmse"]),
                         max(c.get("floor_fit", {}).get("bins_after", {}).get("rmv", [0])))
        plot.plot([0, top], [0, top], pen=pg.mkPen("#888888", style=pg.QtCore.Qt.PenStyle.DashLine))
        plot.plot(before["rmv"], before["rmse"], pen=pg.mkPen("#f0a030", width=2), symbol="o", symbolSize=4,
                  symbolBrush="#f0a030")
        plot.plot(after["rmv"], after["rmse"], pen=pg.mkPen("#4c9be8", width=2), symbol="o", symbolSize=4,
                  symbolBrush="#4c9be8")
        if "floor_fit" in c:
            floored = c["floor_fit"]["bins_after"]
            plot.plot(floored["rmv"], floored["rmse"], pen=pg.mkPen("#3aa655", width=2), symbol="t",
                      symbolSize=5, symbolBrush="#3aa655")
        plot.setXRange(0, top, padding=0)
        plot.setYRange(0, top, padding=0)
    grid.show()  # laid out only once shown (offscreen), else the export is cut
    for _ in range(5):
        app.processEvents()
    exporter = pyqtgraph.exporters.ImageExporter(grid.scene())
    exporter.parameters()["width"] = grid.width()
    exporter.export(path)
    grid.close()
    return path


def cmd_table(args) -> None:
    text = table(args.tag, tuple(args.ref_tag))
    print(text or f"nothing measured under '{args.tag}' yet")
    cal = calibration_table(args.tag)
    print(cal)
    peers = peers_table(args.tag, tuple(args.ref_tag))
    if peers:
        print(peers)
    held = table(HELD_TAG, HELD_REF_TAGS, R.HELD_OUT)
    if held:
        print(held)
    if not args.no_write:
        if text:
            R.write_into_docs(text, BEGIN, END)
        R.write_into_docs(cal, CAL_BEGIN, CAL_END)
        if peers:
            R.write_into_docs(peers, PEER_BEGIN, PEER_END)
        if held:
            R.write_into_docs(held, HELD_BEGIN, HELD_END)
        if not args.no_plot:
            written = calibration_plot(args.tag)
            if written:
                print("wrote", os.path.relpath(written))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train and score cells")
    r.add_argument("--cells", nargs="+", default=None, help="IMAGE_NOISE names, or all")
    r.add_argument("--quick", action="store_true", help=f"{QUICK_CELLS} for {QUICK_MINUTES:g} minutes")
    r.add_argument("--minutes", type=float, default=None, help="training budget per cell (default 10)")
    r.add_argument("--steps", type=int, default=None, help="step budget as well (default: none)")
    r.add_argument("--preset", default=None, help="network size (default: the engine's for the device)")
    r.add_argument("--override", default="{}", help='JSON of ModelConfig fields, e.g. {"merge": "add"}')
    r.add_argument("--train-override", default="{}", help='JSON of TrainConfig fields')
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--device", default="cpu", help="cpu (the matrix's judge), cuda or cuda:N")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--tag", default=None,
                   help=f"folder under benchmarks/results (default: {DEFAULT_TAG}; 'quick' with --quick)")
    r.add_argument("--rerun", action="store_true", help="measure cells that already have a result")
    c = sub.add_parser("recalibrate", help="recompute calibration figures from cached posterior arrays")
    c.add_argument("--tag", default=DEFAULT_TAG)
    t = sub.add_parser("table", help="print the table and write it into docs/benchmarks.md")
    t.add_argument("--tag", default=DEFAULT_TAG)
    t.add_argument("--ref-tag", nargs="+", default=list(REF_TAGS),
                   help="the reference's folders to pair with, the first that has a cell wins")
    t.add_argument("--no-write", action="store_true")
    t.add_argument("--no-plot", action="store_true", help="do not redraw docs/images/calibration_matrix.png")
    args = p.parse_args()
    if args.command == "run":
        if args.tag is None and (json.loads(args.override) or json.loads(args.train_override) or args.preset):
            p.error("a run with an override or a preset is an ablation: name its folder with --tag")
        args.tag = args.tag or ("quick" if args.quick else DEFAULT_TAG)
        cmd_run(args)
    elif args.command == "recalibrate":
        cmd_recalibrate(args)
    else:
        cmd_table(args)


if __name__ == "__main__":
    main()
