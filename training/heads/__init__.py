"""Numbers -> calibrated probabilities: pure fits returning objects (calibration, metrics, Keras heads,
readout heads, per-task heads, title, scope gate, other-category heads). Writes no models folder."""
