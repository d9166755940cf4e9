"""Super-resolution of the rendered views: ``core`` (the math and the stage optimiser) and ``priors`` (the x4
diffusion priors behind one contract)."""
