#!/usr/bin/env bash
# Source this on the lent GPU machine (Python 3.12 + CUDA torch, no network) from the repository root:
#   . bench/gpu_setup.sh
# It installs the wheelhouse carried in .whl/ (shared/gpu/make_wheelhouse.sh) into /tmp/site and puts it on
# PYTHONPATH. Our own package comes from .whl/ if a vsdsr_nerfstudio wheel is there (`pip wheel --no-deps . -w .whl`),
# else it is built from the carried working tree (the device image has setuptools; this saves the 14 MB wheel that
# would duplicate the tracked embedded prior in the 64 MiB a call may carry). rawpy (3 MB) is only used by
# ns-process-data for RAW photos: when its wheel is left out, an empty module stands in for the import.
# ns-* launchers are not created: call the modules (python3 -m nerfstudio.scripts.train ...).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || return 1
if ! ls .whl/vsdsr_nerfstudio-*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --target /tmp/site . \
    || return 1
fi
[ -e /tmp/site/rawpy ] || [ -e /tmp/site/rawpy.py ] || echo '"""Stand-in: rawpy is not carried to this machine."""' \
  > /tmp/site/rawpy.py
export PYTHONPATH=/tmp/site
export PYTHONUNBUFFERED=1
python3 -c "import torch, nerfstudio, diffusers, peft, vsdsr_nerfstudio; print('gpu setup ok', torch.__version__, \
torch.cuda.get_device_name(0), diffusers.__version__, peft.__version__)"
