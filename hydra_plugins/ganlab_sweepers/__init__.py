"""ganlab's Hydra sweepers, where Hydra looks for plugins (the statistics live in the ganlab package)."""
