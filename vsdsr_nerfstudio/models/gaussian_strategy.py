"""gsplat's ``DefaultStrategy`` with a cap on the Gaussian count (only the highest-gradient candidates grow)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Tuple

import torch
from gsplat.strategy import DefaultStrategy

from vsdsr_nerfstudio.models.gaussian_filters import capped_growth


@dataclass
class CappedDefaultStrategy(DefaultStrategy):
    """DefaultStrategy whose growth (duplicate + split, each adds one Gaussian) stops at ``max_gaussians``."""

    max_gaussians: int = 0
    """Largest number of Gaussians after growth (0: no cap)."""

    @torch.no_grad()
    def _grow_gs(self, params: Any, optimizers: Any, state: Dict[str, Any], step: int) -> Tuple[int, int]:
        if self.max_gaussians > 0:
            grads = state["grad2d"] / state["count"].clamp_min(1)
            high = grads > self.grow_grad2d
            allowed = capped_growth(len(params["means"]), int(high.sum()), self.max_gaussians)
            if allowed < int(high.sum()):
                keep = torch.zeros_like(high)
                if allowed > 0:
                    keep[torch.topk(torch.where(high, grads, torch.zeros_like(grads)), allowed).indices] = True
                state["grad2d"] = torch.where(keep, state["grad2d"], torch.zeros_like(state["grad2d"]))
                if step < self.refine_scale2d_stop_iter and state.get("radii") is not None:
                    state["radii"] = torch.where(keep, state["radii"], torch.zeros_like(state["radii"]))
        return super()._grow_gs(params, optimizers, state, step)
