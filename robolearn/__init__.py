"""robolearn: demonstrations, interventions, policies, search and RL in one loop."""

__version__ = "0.1.0"
