"""The SR math over plain tensors: objectives, timestep schedules, the stage optimiser and its config, camera LoRA.

Importable without nerfstudio's heavy parts, diffusers or peft (peft loads lazily when a LoRA is built).
"""
