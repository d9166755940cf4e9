"""The pipeline's panel in nerfstudio's viewer: SR status and controls in a "Super-resolution" folder, and the
training-camera frustums redrawn with the rewritten HR views.

nerfstudio's viewer finds ``ViewerElement`` attributes by walking the pipeline's ``nn.Module`` tree and makes one
folder per module on the path ("Custom Elements/<attribute>/..."), so the panel is an element-only ``nn.Module``
set on the pipeline under the attribute name :data:`PANEL_FOLDER`. Elements are shown in the order of their
attribute names (``c*`` controls, then ``s*`` status).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from jaxtyping import Float
from nerfstudio.utils.rich_utils import CONSOLE
from nerfstudio.viewer.viewer_elements import ViewerButton, ViewerCheckbox, ViewerNumber, ViewerSlider, ViewerText
from torch import Tensor, nn

PANEL_FOLDER = "Super-resolution"
"""Folder of the SR controls in the viewer's control panel (and the pipeline attribute that holds them)."""


class SRViewerPanel(nn.Module):
    """SR status (phase, progress, stages done, last event) and controls (pause, "Upscale now", CFG scales).

    The callbacks are the pipeline's; the panel holds no state of its own beyond what it shows."""

    def __init__(
        self,
        paused: bool,
        guidance_scale: float,
        camera_guidance_scale: float,
        on_pause: Callable[[ViewerCheckbox], Any],
        on_upscale_now: Callable[[ViewerButton], Any],
        on_guidance: Callable[[ViewerSlider], Any],
    ) -> None:
        super().__init__()
        self.c1_pause = ViewerCheckbox("Pause SR", paused, cb_hook=on_pause, hint="Hold scheduled upscaling stages")
        self.c2_upscale_now = ViewerButton("Upscale now", cb_hook=on_upscale_now)
        self.c3_text_cfg = ViewerSlider("Text CFG scale", guidance_scale, 1.0, 30.0, 0.5, cb_hook=on_guidance)
        self.c4_camera_cfg = ViewerSlider(
            "Camera CFG scale", camera_guidance_scale, 0.0, 10.0, 0.5, cb_hook=on_guidance
        )
        self.s1_phase = ViewerText("Phase", "pretraining (LR)", disabled=True)
        self.s2_progress = ViewerText("Progress", "", disabled=True)
        self.s3_cycles = ViewerNumber("Stages done", 0, disabled=True)
        self.s4_event = ViewerText("Last event", "", disabled=True)

    def show(
        self,
        phase: Optional[str] = None,
        progress: Optional[str] = None,
        cycles: Optional[int] = None,
        event: Optional[str] = None,
    ) -> None:
        """Update the status fields given (those not installed in a viewer are skipped)."""
        for element, value in (
            (self.s1_phase, phase),
            (self.s2_progress, progress),
            (self.s3_cycles, cycles),
            (self.s4_event, event),
        ):
            if value is not None and element.gui_handle is not None:
                element.value = value

    def training_finished(self) -> None:
        """Training is over: "Upscale now" can do nothing more, so it is disabled."""
        if self.c2_upscale_now.gui_handle is not None:
            self.c2_upscale_now.set_disabled(True)


def refresh_frustums(viewer: Any, cameras: Any, images: Float[Tensor, "N 3 H W"]) -> None:
    """Show the rewritten HR views on the viewer's training-camera frustums (same pose, new picture)."""
    handles = getattr(viewer, "camera_handles", None)
    if not handles:
        return
    try:
        for index, old in list(handles.items()):
            h, w = images.shape[-2:]  # 100 px high, as nerfstudio draws them
            size = (100, max(1, round(100 * w / h)))
            picture = torch.nn.functional.interpolate(images[index : index + 1], size=size, mode="area")
            picture = (picture[0].permute(1, 2, 0).clamp(0, 1) * 255).to(torch.uint8).cpu().numpy()
            camera = cameras[index]
            new = viewer.viser_server.scene.add_camera_frustum(
                name=f"/cameras/camera_{index:05d}",
                fov=float(2 * torch.arctan(camera.cx / camera.fx[0]).item()),
                aspect=float((camera.cx[0] / camera.cy[0]).item()),
                scale=viewer.config.camera_frustum_scale,
                image=picture,
                wxyz=old.wxyz,
                position=old.position,
            )
            new.on_click(_frustum_click_callback(viewer, index))
            handles[index] = new
    except Exception as error:  # the viewer is a convenience: never let it stop training
        CONSOLE.print(f"[yellow]Could not refresh the viewer's camera images: {error}[/yellow]")


def _frustum_click_callback(viewer: Any, index: int):
    """Clicking a frustum moves the client camera to it (what nerfstudio's viewer does for its frustums)."""

    def callback(event: Any) -> None:
        with event.client.atomic():
            event.client.camera.position = event.target.position
            event.client.camera.wxyz = event.target.wxyz
            viewer.current_camera_idx = index

    return callback
