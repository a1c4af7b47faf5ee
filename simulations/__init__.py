"""Simulated federations: partitioners, the simulation ClientApp and the experiment runner.

Also simulated attacks and dropout (:mod:`.attacks`), device tiers and deadlines
(:mod:`.heterogeneity`), plots, and Pollen's batched engine (:mod:`.batched`) beside Flower's.
"""
