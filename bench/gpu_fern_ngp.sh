#!/usr/bin/env bash
# `vsd-sr-ngp` (Instant-NGP through nerfacc) on LLFF fern x4 at full size on the device machine: proves the model
# choice trains, upscales and syncs at 2016x1512 on a GPU, and times it. Prior `pixel-tiny` (random weights): only
# the NeRF side is measured here, not quality. The machine has CUDA 13, whose CUB lacks the `cub::Equality` that
# nerfacc 0.5.2's scan.cu uses: patched first, as docs/pipeline.md describes.
#   bash bench/gpu_fern_ngp.sh [P K S]      (carry .whl/ and .gpudata/fern/)
set -uo pipefail
P=${1:-500}; K=${2:-50}; S=${3:-300}
. bench/gpu_setup.sh || exit 1
scan=$(python3 -c "import nerfacc, os; print(os.path.join(os.path.dirname(nerfacc.__file__), 'cuda', 'csrc', 'scan.cu'))")
sed -i 's/cub::Equality()/cuda::std::equal_to<>()/g; s|#include <cub/cub.cuh>|#include <cub/cub.cuh>\n#include <cuda/std/functional>|' "$scan"
export MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0
data=$PWD/.gpudata/fern
t0=$(date +%s)
(cd /tmp && python3 -c "from vsdsr_nerfstudio.models.nerfacc_cuda import require_nerfacc_cuda as r; r('cuda'); print('nerfacc CUDA kernels ok')") 2>&1 | tail -n 5
echo "nerfacc build/import: $(( $(date +%s) - t0 )) s"
cd /tmp && timeout $(( 500 - ($(date +%s) - t0) )) python3 -m nerfstudio.scripts.train vsd-sr-ngp --data "$data" \
  --output-dir /tmp/ngp --vis tensorboard --pipeline.prior.prior pixel-tiny \
  --pipeline.pretrain-steps "$P" --pipeline.upscale-steps "$K" --pipeline.sync-steps "$S" --pipeline.num-cycles 1 \
  --max-num-iterations $((P + S)) --steps-per-save 100000 llff-data --downscale-factor 8 --sr-scale 4 \
  2>&1 | grep -v '━' | grep -E "I3DS|Upscaling|Switching|Error|error|Traceback|Finished|nerfacc|CUDA" | tail -n 30
find /tmp/ngp -name phase_times.json -exec cp {} "$OUT/ngp_phase_times.json" \; -exec cat {} \;
nvidia-smi --query-gpu=name --format=csv,noheader
