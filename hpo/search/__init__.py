"""The search: a study made from its spec (``study``), its first trials (``warm_start``), when it
has converged (``convergence``), how its trials go on (``schedulers``) and what TPE learns from
paused ones (``judging``).
"""
