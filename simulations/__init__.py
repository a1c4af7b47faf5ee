"""Simulated federations: partitioners, the simulation ClientApp, the experiment runner, plots."""
