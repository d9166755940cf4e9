#!/usr/bin/env bash
# Source this on the lent GPU machine (Python 3.12 + CUDA torch, no network) from the repository root:
#   . bench/gpu_setup.sh
# It installs the wheelhouse carried in .whl/ (shared/gpu/make_wheelhouse.sh + `pip wheel --no-deps . -w .whl`)
# into /tmp/site and puts it on PYTHONPATH. ns-* launchers are not created: call the modules
# (python3 -m nerfstudio.scripts.train ...).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || return 1
export PYTHONPATH=/tmp/site
export PYTHONUNBUFFERED=1
python3 -c "import torch, nerfstudio, diffusers, peft, vsdsr_nerfstudio; print('gpu setup ok', torch.__version__, \
torch.cuda.get_device_name(0), diffusers.__version__, peft.__version__)"
