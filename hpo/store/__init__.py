"""The store: where studies live. The storage a URL opens (``storage``), the URL parsed once
(``url``), the artifact store beside it (``artifacts``), database outages waited out
(``outage``), and the one package on Optuna's private API (``_optuna``).
"""
