"""How well does the engine's output check (engine/output_check.py) tell a worse-than-input output?

    python benchmarks/output_check.py            # all 28 cells of the real-data matrix, about 2 minutes
    python benchmarks/output_check.py --write    # and put the table into docs/benchmarks.md

The check sees only the noisy frames and an output. Here the outputs are stand-ins for the ways a
denoiser fails or works, on the first 6 frames of each cell (benchmarks/realdata.py):
flat (each frame's mean: what a collapsed model gives), Gaussian blurs of the noisy frames (sigma 1.5,
3, 5 px: an undertrained or oversmoothing denoiser), Gaussian blurs of the clean frames (2, 4 px: lost
detail without noise) and the clean frames themselves. For each, the true gain (PSNR of the output minus
PSNR of the input, against the clean frames) beside the check's bound on it and its verdict. The
trained models' own outputs are checked in the matrix runs (benchmarks/real_matrix.py).
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.ndimage import gaussian_filter

import realdata as R
from napari_cosdd.engine.output_check import check_output

#: The orientation each noise of the matrix is correlated along.
ORIENTATION = {"x": "x", "y": "y", "camera": "x", "none": "none"}
BEGIN, END = "<!-- output check: begin -->", "<!-- output check: end -->"
MARK = {"ok": "", "doubtful": " ?", "worse": " !"}


def outputs(noisy: np.ndarray, clean: np.ndarray) -> dict[str, np.ndarray]:
    out = {"flat": np.broadcast_to(noisy.mean(axis=(1, 2), keepdims=True), noisy.shape)}
    for s in (1.5, 3.0, 5.0):
        out[f"noisy blur {s:g}"] = gaussian_filter(noisy, (0, s, s))
    for s in (2.0, 4.0):
        out[f"clean blur {s:g}"] = gaussian_filter(clean, (0, s, s))
    out["clean"] = clean
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    args = p.parse_args()
    header = None
    lines = []
    counts = {"worse, caught": 0, "worse, missed": 0, "better, flagged worse": 0, "better, passed": 0}
    for image in R.IMAGES:
        for noise in R.NOISES:
            cell = R.make_cell(image, noise)
            noisy = cell.noisy[:R.EVAL_FRAMES].astype(np.float32)
            clean = cell.clean[:R.EVAL_FRAMES]
            base = R.psnr_frames(clean, noisy)
            outs = outputs(noisy, clean)
            if header is None:
                header = ["cell"] + list(outs)
            row = [cell.name]
            for out in outs.values():
                true = R.psnr_frames(clean, out) - base
                check = check_output(noisy[:, None], np.asarray(out)[:, None], "YX", ORIENTATION[noise])
                bound = check.gain_at_most_db
                worse, called = true < 0, check.verdict == "worse"
                counts[("worse, " + ("caught" if called else "missed")) if worse
                       else ("better, " + ("flagged worse" if called else "passed"))] += 1
                true_s = "inf" if not np.isfinite(true) else f"{true:+.1f}"
                bound_s = "> +40" if not bound <= 40 else f"{bound:+.1f}"
                row.append(f"{true_s} / {bound_s}{MARK[check.verdict]}")
            lines.append("| " + " | ".join(row) + " |")
            print(lines[-1], flush=True)
    table = "\n".join(["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)] + lines)
    summary = ", ".join(f"{k}: {v}" for k, v in counts.items())
    print(summary)
    if args.write:
        R.write_into_docs(table + "\n\n" + summary, BEGIN, END)


if __name__ == "__main__":
    main()
