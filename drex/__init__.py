"""drex: serving early-exit LLMs with dynamic rebatching.

Three faces share one scheduler (``drex.core``): a profiler and cost model
(``drex.costmodel``), a SimPy simulator (``drex.sim``) and a real PyTorch
backend (``drex.real``).
"""

from pathlib import Path

__version__ = "0.1.0"

# The repository root: shipped traces, profiles and models live beside the package.
REPO_ROOT = Path(__file__).resolve().parent.parent
