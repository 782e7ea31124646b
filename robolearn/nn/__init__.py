"""Network building blocks shared by every policy, critic and model (one concept, one place).

Import the submodules directly (`from robolearn.nn.mlp import MLP`); this package stays empty so
that importing one block never pulls in the others.
"""
