"""Optional features and the extras that install them (see ``[project.optional-dependencies]``).

The core (model, potential, ASE calculator, MD, training, relaxation, data readers) needs none
of these packages. A feature imports its package with :func:`require` where it is used, so a
missing package stops that feature, never ``import so3krates``, and the error names the extra:

* ``app``: panel, holoviews, bokeh, pandas (the dashboard, ``so3krates.viz`` views);
* ``explore``: dask, distributed (exploration walkers on a Dask cluster);
* ``xtb``: tblite (GFN2-xTB reference labels, MD and validation on the reference);
* ``all``: all three (what ``make install`` installs, with the pinned versions).
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(ImportError):
    """An optional feature's package is not installed; the message names the extra to install."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """``module`` imported for ``feature``; if it (or a package it needs) is missing, a
    MissingExtraError (an ImportError) that says which package and which extra installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        missing = (error.name or module).split(".")[0]
        raise MissingExtraError(
            f"{feature} needs {missing}, which is not installed: pip install 'so3krates[{extra}]'",
            name=error.name,
        ) from error
