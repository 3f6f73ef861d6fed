"""Photo and title -> numbers: backbones, the feature cache, the served readout, colour, title text. Imports data only."""
