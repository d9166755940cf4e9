#!/usr/bin/env bash
# Source this on the lent GPU machine (Python 3.12 + CUDA torch, no network) from the repository root:
#   . bench/gpu_setup.sh
# It installs the wheelhouse carried in .whl/ (shared/gpu/make_wheelhouse.sh) into /tmp/site and puts it on
# PYTHONPATH. Our own package comes from .whl/ if a vsdsr_nerfstudio wheel is there (`pip wheel --no-deps . -w .whl`),
# else it is built from the carried working tree (the device image has setuptools; this saves the 14 MB wheel that
# would duplicate the tracked embedded prior in the 64 MiB a call may carry). rawpy (3 MB) is only used by
# ns-process-data for RAW photos: when its wheel is left out, an empty module stands in for the import.
# .whl/ is made by ../shared/gpu/make_wheelhouse.sh .whl, then `rm .whl/{tensorly,rawpy,jedi,ipython}-*` (21 MB left)
# and `cp ../shared/gpu/install_gsplat_prebuilt.sh ../shared/gpu/*.so.gz .whl/gsplat_prebuilt/` (gsplat 1.4.0 kernels prebuilt for torch 2.11 + CUDA 13, sm_90: 2 MB).
# ns-* launchers are not created: call the modules (python3 -m nerfstudio.scripts.train ...).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || return 1
if ! ls .whl/vsdsr_nerfstudio-*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --target /tmp/site . \
    || return 1
fi
[ -e /tmp/site/rawpy ] || [ -e /tmp/site/rawpy.py ] || echo '"""Stand-in: rawpy is not carried to this machine."""' \
  > /tmp/site/rawpy.py
# tensorly (7 MB) is imported by nerfstudio's splatfacto for its bilateral grid only, which these runs never use.
[ -e /tmp/site/tensorly ] || [ -e /tmp/site/tensorly.py ] || printf '%s\n' \
  '"""Stand-in: tensorly is not carried to this machine (splatfacto imports it; only its bilateral grid uses it)."""' \
  'def set_backend(*args, **kwargs):' '    """No-op."""' > /tmp/site/tensorly.py
# gsplat's CUDA kernels prebuilt for the H200/H100 (skips a ~200 s JIT build) when carried in .whl/gsplat_prebuilt/
if [ -f .whl/gsplat_prebuilt/install_gsplat_prebuilt.sh ]; then bash .whl/gsplat_prebuilt/install_gsplat_prebuilt.sh /tmp/site; fi
export PYTHONPATH=/tmp/site
export PYTHONUNBUFFERED=1
python3 -c "import torch, nerfstudio, diffusers, peft, vsdsr_nerfstudio; print('gpu setup ok', torch.__version__, \
torch.cuda.get_device_name(0), diffusers.__version__, peft.__version__)"
