"""Lightning callbacks of lightning_align (the top-level `callbacks/` folder, imported as `lightning_align.callbacks`)."""
