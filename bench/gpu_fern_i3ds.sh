#!/usr/bin/env bash
# Full-size timing run of `vsd-sr` on LLFF fern x4 (train 504x378 -> HR 2016x1512) with the real x4-upscaler
# architecture and random weights (the hub is unreachable from the GPU machine, so quality is not judged here).
# Shortened schedule so it fits a 10-minute GPU call; per-phase wall times and peak GPU memory come from
# <run>/sr_state/phase_times.json, per-step costs from the stage logs.
# Usage (repo root, after `. bench/gpu_setup.sh`): bash bench/gpu_fern_i3ds.sh DATA OUT [P K S C [ns-train args...]]
# Extra arguments (e.g. `--pipeline.prior.prior embedded --pipeline.prior.model-path DIR`) go to ns-train before
# the dataparser; they override the random-weights prior below. METHOD picks the preset (default vsd-sr).
set -euo pipefail
data=${1:?data folder}; out=${2:?output folder}
P=${3:-500}; K=${4:-60}; S=${5:-300}; C=${6:-2}
shift $(( $# < 6 ? $# : 6 ))
data=$(realpath "$data"); mkdir -p "$out"; out=$(realpath "$out")
# Run outside the repository: its vsdsr_nerfstudio/ folder would shadow the installed package, whose
# vsdsr_nerfstudio.method_configs comes from the top-level method_configs/ folder.
cd /tmp
python3 -m nerfstudio.scripts.train "${METHOD:-vsd-sr}" --data "$data" --output-dir "$out" --vis tensorboard \
  --pipeline.prior.prior sd-x4-random \
  --pipeline.pretrain-steps "$P" --pipeline.upscale-steps "$K" --pipeline.sync-steps "$S" \
  --pipeline.num-cycles "$C" --max-num-iterations $((P + C * S)) --steps-per-save 100000 "$@" \
  llff-data --downscale-factor 8 --sr-scale 4
