"""fedbench: benchmarks and reproducible sweeps for communication-efficient FL."""

__version__ = "0.1.0"
