"""Old module paths of the package, so runs saved before the layout change still load.

A nerfstudio ``config.yml`` names every config class and ``_target`` by its dotted path
(``!!python/object:vsdsr_nerfstudio.i3ds_pipeline.I3DSPipelineConfig``), and ``yaml.Loader`` imports that module
when ``ns-eval``, ``ns-render`` or ``--load-config`` read the file. :func:`install_legacy_module_aliases` (called
when the plugin is imported, as every ``ns-*`` command does) adds an import hook that answers the old module names
with light proxy modules: attribute access is forwarded to the module the code moved to, and the few names that no
longer exist (:data:`LEGACY_ATTRIBUTES`) resolve to what replaced them. No file is left at the old places and
nothing is imported until an old name is used.

Fields that changed shape are migrated by the config classes themselves (``SRStageConfig.__setstate__`` moves the
flat ``lora_*`` fields into the nested LoRA config).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any, Dict, Optional, Sequence, Tuple

LEGACY_MODULES: Dict[str, str] = {
    "vsdsr_nerfstudio.checkpoint_compat": "vsdsr_nerfstudio.compat.checkpoints",
    "vsdsr_nerfstudio.video": "vsdsr_nerfstudio.compat.ffmpeg",
    "vsdsr_nerfstudio.model": "vsdsr_nerfstudio.models.nerfacto",
    "vsdsr_nerfstudio.ngp_model": "vsdsr_nerfstudio.models.instant_ngp",
    "vsdsr_nerfstudio.nerfacc_cuda": "vsdsr_nerfstudio.models.nerfacc_cuda",
    "vsdsr_nerfstudio.metrics.offline_eval": "vsdsr_nerfstudio.models.offline_eval",
    "vsdsr_nerfstudio.i3ds_pipeline": "vsdsr_nerfstudio.pipeline.i3ds",
    "vsdsr_nerfstudio.sr_datamanager": "vsdsr_nerfstudio.pipeline.datamanager",
    "vsdsr_nerfstudio.sr_state": "vsdsr_nerfstudio.pipeline.state",
    "vsdsr_nerfstudio.prior_training": "vsdsr_nerfstudio.tools.train_prior",
    "vsdsr_nerfstudio.upscale_cli": "vsdsr_nerfstudio.tools.upscale",
    "vsdsr_nerfstudio.sr.objectives": "vsdsr_nerfstudio.sr.core.objectives",
    "vsdsr_nerfstudio.sr.schedules": "vsdsr_nerfstudio.sr.core.schedules",
    "vsdsr_nerfstudio.sr.stage": "vsdsr_nerfstudio.sr.core.stage",
    "vsdsr_nerfstudio.sr.stage_config": "vsdsr_nerfstudio.sr.core.stage",
    "vsdsr_nerfstudio.sr.lora": "vsdsr_nerfstudio.sr.core.lora",
    "vsdsr_nerfstudio.sr.prior_base": "vsdsr_nerfstudio.sr.priors.base",
    "vsdsr_nerfstudio.sr.prior_config": "vsdsr_nerfstudio.sr.priors.config",
    "vsdsr_nerfstudio.sr.prior_utils": "vsdsr_nerfstudio.sr.priors.utils",
    "vsdsr_nerfstudio.sr.sd_upscaler": "vsdsr_nerfstudio.sr.priors.sd_upscaler",
    "vsdsr_nerfstudio.sr.sd_x4_configs": "vsdsr_nerfstudio.sr.priors.sd_x4_configs",
    "vsdsr_nerfstudio.sr.text": "vsdsr_nerfstudio.sr.priors.text",
    "vsdsr_nerfstudio.sr.tiled_vae": "vsdsr_nerfstudio.sr.priors.tiled_vae",
    "vsdsr_nerfstudio.sr.pixel_prior": "vsdsr_nerfstudio.sr.priors.pixel_prior",
}
"""Old module name -> the module its code moved to."""

LEGACY_ATTRIBUTES: Dict[Tuple[str, str], Tuple[str, str]] = {
    # the stage config's lazy factory; the config now names the stage class itself (same call signature)
    ("vsdsr_nerfstudio.sr.stage_config", "_build_stage"): ("vsdsr_nerfstudio.sr.core.stage", "SRStage"),
    # the prior config's lazy factory; one registry (``PRIOR_KINDS``) now dispatches, whatever ``_target`` holds
    ("vsdsr_nerfstudio.sr.prior_config", "LazySDUpscalerPrior"): ("vsdsr_nerfstudio.sr.priors.config", "PriorFactory"),
}
"""(old module, old name) -> (new module, new name) for names that no longer exist under the same name."""


class LegacyModule(types.ModuleType):
    """Proxy for an old module name: forwards attribute access to the module the code moved to."""

    def __init__(self, name: str, target: str) -> None:
        super().__init__(name, f"Moved to {target} (alias kept so runs saved before the move still load).")
        self.__legacy_target__ = target

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        module_name, name = LEGACY_ATTRIBUTES.get((self.__name__, attribute), (self.__legacy_target__, attribute))
        return getattr(importlib.import_module(module_name), name)


class LegacyModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import hook that answers the names of :data:`LEGACY_MODULES` with :class:`LegacyModule` proxies."""

    def find_spec(
        self, fullname: str, path: Optional[Sequence[str]] = None, target: Optional[types.ModuleType] = None
    ) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname not in LEGACY_MODULES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return LegacyModule(spec.name, LEGACY_MODULES[spec.name])

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: the proxy resolves attributes on access."""


def install_legacy_module_aliases() -> None:
    """Add the :class:`LegacyModuleFinder` import hook once (cheap: imports nothing)."""
    if not any(isinstance(finder, LegacyModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(LegacyModuleFinder())
