"""One runner per study: ``grid``, ``plane``, ``trajectory``, ``report`` (the pair is
``pipeline.compare_pair``). Each takes a study description built from the specs, tells its
caller what happens through :class:`~mliscan.runners.events.Events`, and returns an outcome;
the command line only declares options and renders outcomes, and the Python API is a façade
over the same runners.

This module holds only what the command line needs before torch is imported: the studies'
defaults where they differ from ``compare``'s.
"""

from __future__ import annotations

from typing import Any

# A fixed batch size, so resumed and sharded runs agree bit for bit; no Gauss length in a
# grid (Figure 8 plots the loss; a plane has no path, hence no Gauss option).
GRID_DEFAULTS: dict[str, Any] = {"batch_size": 1024, "gauss": False}
PLANE_DEFAULTS: dict[str, Any] = {"batch_size": 1024}
TRAJECTORY_DEFAULTS: dict[str, Any] = {"batch_size": 1024}
# More endpoints than this is a typing error (the paths grow as the square).
MAX_ENDPOINTS = 1000
