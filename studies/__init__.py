"""One-off measurements quoted in docs/accuracy.md, run as ``python -m studies.season`` / ``python -m studies.readout``.

Beside benchmarks/: nothing in the product imports them (tests/test_layers.py). The sweep grids they quote are in grids/."""
