"""Differential privacy at each hospital: DP-SGD with a budget that holds across the whole run.

Owns: the plan (noise multiplier from the budget, :mod:`.plan`), the cumulative ledger
(:mod:`.ledger`), wrapping training for DP-SGD (:mod:`.engine`) and the book-keeping per-sample
clipping method (:mod:`.bk_clipping`). Imports Opacus and torch only; nothing from Flower, the
secure-aggregation code or the task's data.
"""
