#!/usr/bin/env bash
# Fern x4 (504x378 -> 2016x1512, eval views 0/8/16) with the embedded prior, against the same NeRF without SR,
# plus the prior's own check on Set5/Set14/BSD100 -- the issue-4 evidence, in two <=10-minute device calls on one
# warm machine (run folders under /tmp survive between the calls):
#
#   bash bench/gpu_fern_embedded.sh train   # vsd-sr, P=2000, 1 cycle (K=400 VSD steps, S=1200 HR sync steps)
#   bash bench/gpu_fern_embedded.sh eval    # ns-eval of it; the no-SR NeRF (same seed, same 3200 steps, LR only)
#                                           # trained and ns-eval'd; bench/sr_prior_eval.py on the test photos
#
# Carried (ignored folders): .whl/ (wheelhouse + our wheel), .gpudata/fern/ (poses_bounds.npy, images_8, images_2),
# build/metrics/lpips_alex_features.npz, build/sr_test/ (eval only). METHOD: the preset (default vsd-sr-embedded,
# the stage settings measured for this prior; the 2026-11-24 row in docs/benchmarks.md used METHOD=vsd-sr, i.e. the
# SD settings). PRIOR_DIR: a pixel-prior folder (default: the weights shipped in the package; the 2026-11-24 run
# used /tmp/prun/model, the export of bench/gpu_train_prior.sh on the same machine, since shipped as they are).
set -uo pipefail
phase=${1:?train or eval}
[ -d /tmp/site/nerfstudio ] || { . bench/gpu_setup.sh || exit 1; }
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
repo=$PWD
lpips=$repo/build/metrics/lpips_alex_features.npz
prior_args=(--pipeline.prior.prior embedded)
[ -n "${PRIOR_DIR:-}" ] && prior_args+=(--pipeline.prior.model-path "$PRIOR_DIR")
export METHOD=${METHOD:-vsd-sr-embedded}
P=2000; K=400; S=1200; C=1

ns_eval() {  # config search root, output json
  local cfg; cfg=$(find "$1" -name config.yml | head -n 1)
  (cd /tmp && python3 -m nerfstudio.scripts.eval --load-config "$cfg" --output-path "$2") 2>&1 | grep -v '━' | tail -n 5
}

if [ "$phase" = train ]; then
  nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
  timeout 560 bash bench/gpu_fern_i3ds.sh .gpudata/fern /tmp/fern_sr $P $K $S $C \
    "${prior_args[@]}" --pipeline.model.lpips-weights "$lpips" \
    2>&1 | grep -v '━' | grep -v '^\s*$' | tail -n 40
  find /tmp/fern_sr -name phase_times.json -exec cp {} "$OUT/" \;
  find /tmp/fern_sr -name phase_times.json -exec cat {} \;
elif [ "$phase" = eval ]; then
  ( cd /tmp && timeout 420 python3 -m nerfstudio.scripts.train vsd-sr --data "$repo/.gpudata/fern" \
      --output-dir /tmp/fern_base --vis tensorboard --pipeline.sr-enabled False --max-num-iterations $((P + C * S)) \
      --steps-per-save 100000 --pipeline.model.lpips-weights "$lpips" llff-data --downscale-factor 8 --sr-scale 4 \
      > /tmp/fern_base.log 2>&1; echo "no-SR training exit $?"
    ns_eval /tmp/fern_base "$OUT/fern_nosr_eval.json" ) &
  ( ns_eval /tmp/fern_sr "$OUT/fern_sr_eval.json" ) &
  ( timeout 420 python3 bench/sr_prior_eval.py ${PRIOR_DIR:+--model-path "$PRIOR_DIR"} --data build/sr_test --steps 20 \
      --lpips-weights "$lpips" --json "$OUT/prior_eval.json" 2>&1 | grep -v '━' | tail -n 12 ) &
  wait
  grep -v '━' /tmp/fern_base.log | tail -n 3
  for f in "$OUT"/fern_*_eval.json; do echo "$f"; cat "$f"; done
else
  echo "unknown phase $phase (train or eval)"; exit 2
fi
