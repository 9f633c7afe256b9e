"""ganlab's Hydra launchers, where Hydra looks for plugins (the code lives in the ganlab package)."""
