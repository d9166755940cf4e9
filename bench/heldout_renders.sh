#!/usr/bin/env bash
# Source on the GPU machine: render_heldout RUN_DIR NAME -> $OUT/<NAME>_view{0,1,2}.png, the render half of ns-eval's
# gt|render images of the held-out views (scored here by bench/score_fern_renders.py against the exact ground truth).
render_heldout() {
  local cfg; cfg=$(find "$1" -name config.yml | head -n 1)
  python3 -m nerfstudio.scripts.eval --load-config "$cfg" --output-path "/tmp/$2_eval.json" \
    --render-output-path "/tmp/$2_renders" 2>&1 | grep -v '━' | tail -n 2
  python3 - "$2" <<'PY'
import os, sys
from pathlib import Path
from PIL import Image
name = sys.argv[1]
for i, path in enumerate(sorted(Path(f"/tmp/{name}_renders").glob("*_img_*.png"))):
    with Image.open(path) as im:
        w, h = im.size
        im.crop((w // 2, 0, w, h)).save(Path(os.environ["OUT"]) / f"{name}_view{i}.png")
print(name, "renders saved")
PY
}
