"""Finding model files shipped inside installed PyPI packages (nothing is downloaded)."""
from __future__ import annotations

import importlib.util
from pathlib import Path


def package_folders(package: str) -> list[Path]:
    """The folders of an installed package, without importing it; [] when it is not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(folder) for folder in spec.submodule_search_locations]
