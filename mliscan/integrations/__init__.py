"""Callbacks that measure MLI where training happens (each framework an optional extra).

* ``mliscan.integrations.lightning.MLICallback`` (``pip install mliscan[lightning]``)
* ``mliscan.integrations.transformers.MLITrainerCallback`` (``mliscan[transformers]``)
* ``mliscan.track`` for plain training loops (no extra needed)
"""
