"""vsdsr_nerfstudio: 4x NeRF super-resolution with Variational Score Distillation, as a nerfstudio method.

Every ``ns-*`` command imports this package through its entry points, so it stays light: no diffusers, peft or
transformers at import time (they load when the first upscaling stage starts).
"""

from vsdsr_nerfstudio.compat.checkpoints import allow_nerfstudio_checkpoint_globals
from vsdsr_nerfstudio.compat.legacy_paths import install_legacy_module_aliases

__version__ = "0.1.0"

allow_nerfstudio_checkpoint_globals()
install_legacy_module_aliases()  # config.yml of runs saved before the layout change name the old module paths

try:  # never let a video convenience break an ns-* command
    from vsdsr_nerfstudio.compat.ffmpeg import use_bundled_ffmpeg

    use_bundled_ffmpeg()
except Exception:  # pragma: no cover
    pass
