#!/usr/bin/env bash
# `vsdsr-compare` on fern x4 on the 2-GPU machine (issues 12-14): the Gaussian method with the embedded prior first
# (its baselines: no SR for the same steps and for the same training time, 2D SR then NeRF), Nerfacto's default
# `vsd-sr-embedded` schedule second (the Triton hash grid), one run per GPU at a time (--gpus 0 1).
# The comparison outlasts one 10-minute call, so `start` launches it in its own process session (it runs on while
# the machine stays held) and `wait`, called right after, follows it to the end and returns its outputs.
#
#   python bench/slim_wheels.py .whl                                                   # here, once
#   python bench/fern_compare_data.py prepare ../shared/data/llff/fern .gpudata/fern_cmp
#   mkdir -p .gpudata/metrics && cp ../shared/metrics/lpips_alex_features.npz .gpudata/metrics/
#   bash bench/gpu_fern_compare.sh start 570   # device (nvidia-h200-x2; carry .whl .gpudata/fern_cmp .gpudata/metrics)
#   bash bench/gpu_fern_compare.sh wait 580    # device, the next call (no carry needed)
set -uo pipefail
phase=${1:?start or wait}; limit=${2:-570}
t0=$(date +%s); work=/tmp/cmp
if [ "$phase" = start ]; then
  if [ -d /tmp/site/nerfstudio ]; then export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1; else . bench/gpu_setup.sh || exit 1; fi
  python3 bench/fern_compare_data.py hr .gpudata/fern_cmp /tmp/fern_cmp || exit 1
  mkdir -p "$work" && cp .gpudata/metrics/lpips_alex_features.npz "$work/"
  cd /tmp
  setsid nohup python3 -m vsdsr_nerfstudio.tools.compare --data /tmp/fern_cmp --output "$work/out" \
    --methods vsd-sr-splat-embedded vsd-sr-embedded --gpus 0 1 --lpips-weights "$work/lpips_alex_features.npz" \
    --common-args="--vis tensorboard --steps-per-eval-image 1000000 --steps-per-eval-all-images 1000000" \
    > "$work/compare.log" 2>&1 < /dev/null &
  echo $! > "$work/pid"
  echo "vsdsr-compare started (pid $(cat $work/pid)) after $(( $(date +%s) - t0 )) s of setup"
fi
cd /tmp
pid=$(cat "$work/pid")
while kill -0 "$pid" 2> /dev/null && [ $(( $(date +%s) - t0 )) -lt "$limit" ]; do sleep 10; done
if kill -0 "$pid" 2> /dev/null; then echo "STILL RUNNING after $(( $(date +%s) - t0 )) s"; else echo "FINISHED"; fi
nvidia-smi --query-gpu=index,memory.used,utilization.gpu --format=csv,noheader
grep -v '━' "$work/compare.log" | grep -v "^\s*$" | tail -n 40
for r in "$work"/out/runs/*/; do
  echo "== $(basename "$r"): $(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['status'], d.get('wall_s'))" "$r/compare_run.json" 2> /dev/null)"
  grep -v '━' "$r/train.log" 2> /dev/null | grep -E "Upscaling stage|I3DS phase|Error|Traceback|rror" | tail -n 6
done
# Issue 12: the SD x4 prior's stage cost on the Gaussian backbone (sd-x4-random times it exactly), one short cycle
# on GPU 0 once the comparison is done and time is left: P=500, K=100, S=200 (per-step costs scale the schedule).
if ! kill -0 "$pid" 2> /dev/null && [ "$phase" = wait ] && [ $(( limit - ($(date +%s) - t0) )) -gt 150 ]; then
  timeout $(( limit - ($(date +%s) - t0) - 20 )) python3 -m nerfstudio.scripts.train vsd-sr-splat \
    --pipeline.prior.prior sd-x4-random --data /tmp/fern_cmp --output-dir /tmp/sdx4 --vis tensorboard \
    --steps-per-eval-image 1000000 --steps-per-eval-all-images 1000000 --max-num-iterations 700 \
    --pipeline.pretrain-steps 500 --pipeline.upscale-steps 100 --pipeline.sync-steps 200 --pipeline.num-cycles 1 \
    llff-data --downscale-factor 8 --sr-scale 4 > /tmp/sdx4.log 2>&1
  echo "sd-x4-random splat run exit $?"
  grep -v '━' /tmp/sdx4.log | grep -E "Upscaling stage|Error|Traceback|rror" | tail -n 5
  find /tmp/sdx4 -name phase_times.json -exec cp {} "$OUT/sdx4_splat_phase_times.json" \;
fi
cp "$work"/out/results.json "$work"/out/results.md "$work"/out/crops.png "$OUT"/ 2> /dev/null
(cd "$work/out" && find . -name train.log -o -name phase_times.json -o -name compare_run.json -o -name config.yml \
  -o -name compare_sr2d.json | tar czf "$OUT/runs_meta.tgz" -T - ) 2> /dev/null
cp "$work/compare.log" "$OUT/compare.log"
ls -la "$OUT"
