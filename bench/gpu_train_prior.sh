#!/usr/bin/env bash
# One <=10-minute training run of the embedded x4 prior on the device machine (H100), chained across calls.
#
#   bash bench/gpu_train_prior.sh MINUTES [extra vsdsr-train-prior args, e.g. --init-from build/prev_model]
#
# Expects, in ignored folders carried with the call (docs/embedded_prior.md, "10-minute runs"):
#   build/prior_whl/     diffusers, nerfstudio (no deps), tyro, docstring_parser, typeguard, dill, defusedxml, PySocks
#   build/prior_train/   the training photos (sub-folders a/, b/, c/ of /work/shared/data/sr/train, staged over calls)
#   build/prior_val16/   the first 16 (sorted) images of /work/shared/data/sr/test, validation only
#   build/metrics/       lpips_alex_features.npz
# The run folder /tmp/prun survives between calls while the machine stays warm, so every call resumes the full
# checkpoint (weights, EMA, AdamW state, step). The fp16 EMA export and the logs come back in $OUT.
set -euo pipefail
MINUTES=${1:?minutes}; shift
if [ ! -d /tmp/site/diffusers ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    build/prior_whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
echo "training photos: $(find build/prior_train -type f | wc -l)"
python3 -m vsdsr_nerfstudio.tools.train_prior --images build/prior_train --val-images build/prior_val16 \
  --lpips-weights build/metrics/lpips_alex_features.npz --output /tmp/prun --max-minutes "$MINUTES" --resume \
  --terms "Research use only: trained on the 817 photos of /work/shared/data/sr/train (BSDS500, ImageNet, Sun-Hays 80, McMaster, Kodak, Wikimedia Commons); see docs/embedded_prior.md" \
  "$@" 2>&1 | grep -v '━' | tail -n 40
mkdir -p "$OUT/model"
cp -r /tmp/prun/model/* "$OUT/model/"
cp /tmp/prun/*.csv /tmp/prun/*.jsonl "$OUT/" 2>/dev/null || true
tail -n 3 /tmp/prun/train_log.csv; cat /tmp/prun/val_log.csv
