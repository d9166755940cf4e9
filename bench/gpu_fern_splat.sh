#!/usr/bin/env bash
# vsd-sr-splat on fern x4 in ONE device call (issue #12): the Gaussian backbone with the embedded prior, and the same
# Gaussians without SR, trained on the GPU; held-out views 0/8/16 rendered at 2016x1512 come back and are scored here
# against the exact ground truth (bench/score_fern_renders.py). Also the pure-torch rasteriser against gsplat.
#
#   bash bench/gpu_fern_e2e.sh prepare && cp -r ../shared/data/llff/fern/sparse .gpudata/fern_e2e/   # here
#   bash bench/gpu_fern_splat.sh sr P K S C [extra ns-train options...]   # device (carry .whl .gpudata)
#   bash bench/gpu_fern_splat.sh nosr STEPS [extra options...]            # device: the same Gaussians, no SR
#   python bench/score_fern_renders.py --renders /work/.device/N --json bench/results/fern_splat.json   # here
set -uo pipefail
mode=${1:?sr or nosr}; shift
[ -d /tmp/site/nerfstudio ] || { . bench/gpu_setup.sh || exit 1; }
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
repo=$PWD; data=$PWD/.gpudata/fern_e2e
. "$repo/bench/heldout_renders.sh"
parser=(llff-data --downscale-factor 8 --sr-scale 4)
cd /tmp
if [ "$mode" = sr ]; then
  P=${1:?P}; K=${2:?K}; S=${3:?S}; C=${4:?C}; shift 4
  start=$(date +%s)
  python3 -m nerfstudio.scripts.train vsd-sr-splat-embedded --data "$data" --vis tensorboard --steps-per-save 100000 \
    --output-dir /tmp/splat_sr --max-num-iterations $((P + C * S)) --pipeline.pretrain-steps "$P" \
    --pipeline.upscale-steps "$K" --pipeline.sync-steps "$S" --pipeline.num-cycles "$C" "$@" "${parser[@]}" \
    > /tmp/splat_sr.log 2>&1
  echo "SR training exit $? after $(( $(date +%s) - start )) s"
  grep -v '━' /tmp/splat_sr.log | grep -E "I3DS|Upscaling|Switching|Gaussians|Warning|Error|Traceback|rror" | tail -n 25
  find /tmp/splat_sr -name phase_times.json -exec cp {} "$OUT/splat_sr_phase_times.json" \;
  render_heldout /tmp/splat_sr splat_sr
elif [ "$mode" = nosr ]; then
  N=${1:?steps}; shift
  name=${RUN_NAME:-splat_nosr}  # several no-SR variants in one call: RUN_NAME=... bash bench/gpu_fern_splat.sh nosr
  start=$(date +%s)
  python3 -m nerfstudio.scripts.train vsd-sr-splat-embedded --data "$data" --vis tensorboard --steps-per-save 100000 \
    --output-dir "/tmp/$name" --max-num-iterations "$N" --pipeline.sr-enabled False "$@" "${parser[@]}" \
    > "/tmp/$name.log" 2>&1
  echo "$name training exit $? after $(( $(date +%s) - start )) s"
  grep -v '━' "/tmp/$name.log" | grep -E "I3DS phase|Warning|Error|Traceback|rror" | tail -n 10
  render_heldout "/tmp/$name" "$name"
else
  echo "unknown mode $mode (sr or nosr)"; exit 2
fi
