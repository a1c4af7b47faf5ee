"""Differential privacy: accounting for central/local Gaussian noise and the distributed discrete
Gaussian under secure aggregation (issue 21). Pure numpy + dp-accounting; never torch."""
