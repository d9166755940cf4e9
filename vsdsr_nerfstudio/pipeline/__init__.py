"""The I3DS pipeline (LR pretraining, upscaling and synchronisation stages), its datamanager and SR state files."""
