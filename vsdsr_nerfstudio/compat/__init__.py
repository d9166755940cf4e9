"""Compatibility shims applied when the plugin is imported: torch>=2.6 checkpoint loading, bundled ffmpeg, and
aliases that let runs saved before the package layout changed load."""
