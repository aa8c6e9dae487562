"""Benchmarks of hpo, each measured side by side with a baseline in the same command.

``python -m benchmarks.run`` runs them and writes a markdown table (``benchmarks/RESULTS.md``);
``--smoke`` runs each at a tiny budget in seconds (CI). See ``benchmarks/README.md``.
"""
