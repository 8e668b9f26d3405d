"""cellrep core: rotation-invariant 3D single-cell representations, free of orchestration code."""

__version__ = "0.1.0"
