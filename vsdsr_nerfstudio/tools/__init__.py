"""Console tools: ``vsdsr-train-prior`` (train the pixel-space x4 prior) and ``vsdsr-upscale`` (upscale photos)."""
