#!/usr/bin/env bash
# The SR core alone on real fern views (bench/fern_sr_diagnose.py) on the GPU: every guidance variant rewrites the
# bicubic 4x of views 0/8/16 (their real LR images and cameras), scored against the 4x ground truth.
#
#   bash bench/gpu_fern_diagnose.sh prepare [FERN]      # here: .gpudata/fern3 (views 0/8/16 of FERN: poses rows,
#                                                       # images/, images_8/) and build/metrics/ (LPIPS weights)
#   bash bench/gpu_fern_diagnose.sh run K VARIANT...    # device (carry .whl, .gpudata, build/metrics): K steps each
set -uo pipefail
phase=${1:?prepare or run}; shift
if [ "$phase" = prepare ]; then
  fern=${1:-../shared/data/llff/fern}
  rm -rf .gpudata/fern3 && mkdir -p .gpudata/fern3/images .gpudata/fern3/images_8 build/metrics
  cp ../shared/metrics/lpips_alex_features.npz build/metrics/
  python3 - "$fern" <<'PY'
import shutil, sys
from pathlib import Path
import numpy as np
fern, out, views = Path(sys.argv[1]), Path(".gpudata/fern3"), [0, 8, 16]
np.save(out / "poses_bounds.npy", np.load(fern / "poses_bounds.npy")[views])
for sub in ("images", "images_8"):
    files = sorted(p for p in (fern / sub).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    for v in views:
        shutil.copy(files[v], out / sub / files[v].name)
print("prepared", out, "views", views)
PY
  du -sh .gpudata/fern3
elif [ "$phase" = run ]; then
  K=${1:?steps}; shift
  [ -d /tmp/site/nerfstudio ] || { . bench/gpu_setup.sh || exit 1; }
  export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
  python3 bench/fern_sr_diagnose.py --data .gpudata/fern3 --views 0 1 2 --steps "$K" --variants "$@" \
    --lpips-weights build/metrics/lpips_alex_features.npz --json "$OUT/fern_sr_diagnose_k$K.json" \
    --save-images /tmp/diag_k"$K" 2>&1 | grep -v -i warn | grep -v '━'
  cp /tmp/diag_k"$K"/montage.png "$OUT/montage_k$K.png"
else
  echo "unknown phase $phase (prepare or run)"; exit 2
fi
