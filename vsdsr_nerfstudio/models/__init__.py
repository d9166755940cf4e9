"""The NeRF / Gaussian models of the method and their shared offline held-out evaluation at ``sr_scale`` x."""
