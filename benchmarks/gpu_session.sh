#!/usr/bin/env bash
# The checks a session lent a CUDA GPU runs, in one command that fits a short lease:
#
#   bash benchmarks/gpu_session.sh OUT_DIR REF_DIR [MINUTES] [CELLS...]
#
# 1. benchmarks/speed.py on the GPU, alone: seconds per training step (fp32 and bf16) of the small and
#    large presets, the largest batch that fits, inference speed.
# 2. Real-data matrix cells trained side by side on the one GPU, one process per run and one CPU thread
#    each: ours with the GPU default (large preset, bf16), ours with `small` (the reference's size), and
#    the reference's small (REF_DIR: krulllab/COSDD, fetched outside the repository) in bf16-mixed, as its
#    example config trains. They share the GPU, so each run's steps are what it got of it: the logs and
#    result files say how many.
# 3. The GPU test tier (tests/test_gpu.py) and the engine's tests, on a machine where "auto" is CUDA.
#
# Everything lands in OUT_DIR/gpu_session.tgz (results JSON, logs) and OUT_DIR/summary.txt. Needs only
# torch, numpy, scipy, tifffile, scikit-image and pytest; the reference needs pytorch_lightning, and the
# nuclei images need stardist's data files on the path (only those are read).
set -u
out=${1:?OUT_DIR}; ref=${2:?REF_DIR}; minutes=${3:-3}
shift $(( $# < 3 ? $# : 3 ))
cells=${*:-nuclei2d_camera moon_camera hubble_y cell_x nuclei3d_none}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 1
export PYTHONPATH="$root/src:$root/benchmarks:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
dev=${COSDD_DEVICE:-cuda}                  # cpu only to try the script out on a machine without a GPU
work=$(mktemp -d)                           # a device tool may bring back only a few files from OUT_DIR
export COSDD_BENCH_CACHE="$work/cache"
logs="$work/logs"; mkdir -p "$logs" "$out"
summary="$work/summary.txt"

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
  python3 -c "import torch, numpy, skimage; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU', '| numpy', numpy.__version__, '| skimage', skimage.__version__)"
  nproc
} > "$summary" 2>&1

tag=${COSDD_TAG:-gpu}                       # results go to benchmarks/results/$tag-ours, -small, -reference
tests=${COSDD_TESTS:-tests/test_gpu.py tests/test_model_file.py tests/test_inference.py tests/test_model.py \
tests/test_ar_decoder.py}

# 1. Speed, with nothing else running (COSDD_SPEED_LIMIT=0 leaves it out).
if [ "${COSDD_SPEED_LIMIT:-150}" != 0 ]; then
  timeout "${COSDD_SPEED_LIMIT:-150}" python3 benchmarks/speed.py --device "$dev" --presets small large --steps 20 \
    --threads 1 --largest-start 512 > "$logs/speed.log" 2>&1
  echo "speed rc=$? (124: stopped at its limit; what it printed is kept)" >> "$summary"
  cp "$logs/speed.log" "$out/"
else
  echo "speed left out" >> "$summary"
fi

# 2. The cells, every run at once, each bounded so that the command ends in time.
limit=$(python3 -c "print(int($minutes * 60 + ${COSDD_SLACK:-120}))")
for c in $cells; do
  timeout "$limit" python3 benchmarks/real_matrix.py run --cells "$c" --minutes "$minutes" --device "$dev" \
    --threads 1 --tag "$tag-ours" > "$logs/ours_$c.log" 2>&1 &
  timeout "$limit" python3 benchmarks/real_matrix.py run --cells "$c" --minutes "$minutes" --device "$dev" \
    --threads 1 --preset small --tag "$tag-small" > "$logs/small_$c.log" 2>&1 &
  timeout "$limit" python3 benchmarks/reference_cosdd.py --ref-dir "$ref" --cells "$c" --minutes "$minutes" \
    --device "$dev" --threads 1 --tag "$tag-reference" > "$logs/ref_$c.log" 2>&1 &
done
sleep 20  # let the runs take the GPU first; the tests then share what is left
# shellcheck disable=SC2086
timeout "$limit" python3 -m pytest -q -p no:cacheprovider -o addopts="-ra" $tests > "$logs/pytest.log" 2>&1 &
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv -l 30 > "$logs/nvidia-smi.txt" 2>&1 &
smi=$!
wait $(jobs -p | grep -v "^$smi$")
kill "$smi" 2>/dev/null

for f in "$logs"/*.log; do echo "== $(basename "$f"): $(tail -n 1 "$f")"; done >> "$summary"
cp "$summary" "$out/"
tar -czf "$out/gpu_session.tgz" benchmarks/results/"$tag"-* -C "$work" logs summary.txt
cat "$summary"
