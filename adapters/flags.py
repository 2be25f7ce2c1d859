"""The command-line flags of the built-in adapters, declared without torch.

``--hidden``, ``--activation`` and ``--bn`` set the mlp adapter's options, ``--bn`` and
``--init-scheme`` the CIFAR ResNets'. Each adapter names its flags (``Adapter.flags``); the
command line reads them here (``registry.arch_flags``), since ``--help`` builds every option
and must not import torch or any model code to do it. Any other adapter option is given as
``--arch-opt KEY=VALUE``.
"""

from __future__ import annotations

from mliscan.spec import AdapterFlag

HIDDEN = AdapterFlag("hidden", "MLP hidden widths, e.g. 128,128.", show="from the checkpoint")
ACTIVATION = AdapterFlag(
    "activation", "MLP activation.", choices=("relu", "tanh", "gelu"), rare=True
)
BN = AdapterFlag(
    "bn", "Build the batch-norm variant (mlp, resnet*).", boolean=True, negative="--no-bn"
)
INIT_SCHEME = AdapterFlag(
    "init_scheme",
    "ResNet initialisation.",
    key="init",
    choices=("default", "block-identity", "fixup"),
    rare=True,
)

# In the order the command line lists them (after --arch).
FLAGS = (HIDDEN, ACTIVATION, BN, INIT_SCHEME)
