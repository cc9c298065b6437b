#!/usr/bin/env bash
# The decisive benchmark at full scale in one device command (issue 19): ResNet-56
# (decide_gpu.yaml, with the unstructured and claim rows) and ResNet-110 (decide_gpu_r110.yaml)
# on all of Fashion-MNIST, their workers sharing the one GPU, then the reports and the
# published baselines. Installs nothing: it checks what it needs and stops, saying what is
# missing, before any training.
#
#   bash benchmarks/methods/gpu_decide.sh
#
# Environment: OUT (results; default /tmp/regprune-decide), PYTHON (default .venv/bin/python,
# else python3), DEADLINE_S (seconds of training before the workers are stopped; default 540,
# so the reports fit in a 10-minute command), WORKERS (per model; default the configs' 6),
# CACHE (baselines and models; default /tmp/regprune-bench-cache), CONFIGS (space-separated
# config files instead of the two; a tiny CPU config checks this script without a GPU).
# Resuming on a fresh machine: commit what a command brought back (<config>.jsonl into
# docs/benchmarks/, baselines/* into benchmarks/baselines/, the configs' baselines_dir) and run
# it again: it starts from those records (copied to $OUT) and reads those baselines (sha256
# checked) instead of training them again.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/regprune-decide}"
CACHE="${CACHE:-/tmp/regprune-bench-cache}"
DEADLINE_S="${DEADLINE_S:-540}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="src:.${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT" "$CACHE"
read -r -a CONFIGS <<<"${CONFIGS:-benchmarks/methods/configs/decide_gpu.yaml benchmarks/methods/configs/decide_gpu_r110.yaml}"

echo "== checks ($(date -u +%H:%M:%S))"
"$PYTHON" - "${CONFIGS[@]}" <<'PY'
import sys

problems = []
try:
    import torch
except ImportError as error:
    sys.exit(f"torch is not importable ({error}); use a Python that has it (PYTHON=...)")
cuda = False
try:
    from importlib.metadata import version

    import torch_pruning  # noqa: F401

    tp_version = version("torch-pruning")  # its __version__ says 1.6.0 in the 1.6.1 wheel
    if tp_version != "1.6.1":
        problems.append(f"Torch-Pruning {tp_version}, the peer rows need 1.6.1")
except ImportError:
    problems.append("Torch-Pruning is not installed (the peer rows need torch-pruning==1.6.1)")
try:
    import regprune  # noqa: F401
    from benchmarks.methods.config import load_config

    for path in sys.argv[1:]:
        cuda |= load_config(path).device.startswith("cuda")
except Exception as error:  # a broken checkout: say so before the GPU time is spent
    problems.append(f"the harness does not load: {type(error).__name__}: {error}")
try:
    from regprune.data import build_datasets

    splits = build_datasets("fashionmnist", subset=None, val_fraction=0.0, seed=0)
    print(f"fashion-mnist: {len(splits.train)} train / {len(splits.test)} test images")
except Exception as error:
    problems.append(f"Fashion-MNIST cannot be opened ({type(error).__name__}: {error})")
if cuda and not torch.cuda.is_available():
    problems.append("CUDA is not available to torch (the configs say device: cuda)")
if problems:
    sys.exit("missing:\n- " + "\n- ".join(problems))
if cuda:
    free, total = torch.cuda.mem_get_info()
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, "
          f"{free / 2**30:.0f} of {total / 2**30:.0f} GiB free")
PY
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv
fi

echo "== runs, deadline ${DEADLINE_S}s ($(date -u +%H:%M:%S))"
pids=()
for config in "${CONFIGS[@]}"; do
  name="$(basename "$config" .yaml)"
  if [[ ! -s "$OUT/$name.jsonl" && -s "docs/benchmarks/$name.jsonl" ]]; then
    cp "docs/benchmarks/$name.jsonl" "$OUT/$name.jsonl"  # a previous command's records
    echo "$name: resuming from docs/benchmarks/$name.jsonl"
  fi
  # setsid: the deadline stops a config's whole process group (its workers included)
  setsid timeout --signal=TERM --kill-after=20 "$DEADLINE_S" "$PYTHON" -m benchmarks.methods.run \
    "$config" --out "$OUT/$name.jsonl" --cache-dir "$CACHE" ${WORKERS:+--workers "$WORKERS"} \
    >"$OUT/$name.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
echo "runs ended with status $status (124: the deadline; rerun to resume)"
if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.used --format=csv; fi

echo "== reports ($(date -u +%H:%M:%S))"
for config in "${CONFIGS[@]}"; do
  name="$(basename "$config" .yaml)"
  tail -n 3 "$OUT/$name.log" || true
  if [[ -s "$OUT/$name.jsonl" ]]; then
    "$PYTHON" -m benchmarks.methods.report "$config" --out "$OUT/$name.jsonl" >/dev/null
    grep -c '"status": "ok"' "$OUT/$name.jsonl" | sed "s/^/$name: ok records: /"
  fi
  "$PYTHON" -m benchmarks.methods.baselines "$config" --cache-dir "$CACHE" \
    --dir "$OUT/baselines" || true
done
ls -la "$OUT"
