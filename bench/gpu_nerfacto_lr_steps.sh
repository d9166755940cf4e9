#!/usr/bin/env bash
# Issue 14: Nerfacto's LR training step inside `ns-train` (the trainer, writer and callbacks included), alone on one
# GPU, to set beside the bare loop of bench/bench_nerfacto_fern_backends.py and the 2-GPU comparison run.
#   bash bench/gpu_nerfacto_lr_steps.sh STEPS    # device (nvidia-h200; carry .whl .gpudata/fern_cmp)
set -uo pipefail
steps=${1:-3000}
[ -d /tmp/site/nerfstudio ] || { . bench/gpu_setup.sh || exit 1; }
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
[ -d /tmp/fern_cmp ] || python3 bench/fern_compare_data.py hr .gpudata/fern_cmp /tmp/fern_cmp > /dev/null || exit 1
cd /tmp
start=$(date +%s)
python3 -m nerfstudio.scripts.train vsd-sr-embedded --data /tmp/fern_cmp --output-dir /tmp/lrsteps --vis tensorboard \
  --steps-per-eval-image 1000000 --steps-per-eval-all-images 1000000 --max-num-iterations "$steps" \
  --pipeline.sr-enabled False llff-data --downscale-factor 8 --sr-scale 4 > /tmp/lrsteps.log 2>&1
echo "exit $? after $(( $(date +%s) - start )) s"
grep -v '━' /tmp/lrsteps.log | grep -E "I3DS phase|Error|Traceback" | tail -n 3
python3 - <<'PY'
import re
seen = {}
for line in open("/tmp/lrsteps.log", errors="replace"):
    m = re.match(r"^(?:\x1b\[[0-9;]*[A-Za-z])*\s*(\d+) \(\s*[\d.]+%\)\s+([\d.]+) ms", line)
    if m:
        seen[int(m.group(1))] = float(m.group(2))
print("Train Iter (ms) at step:", {k: seen[k] for k in sorted(seen) if k % 250 == 0 or k == max(seen)})
PY
