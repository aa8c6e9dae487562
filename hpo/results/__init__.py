"""The results: numbers (``summary``, ``numbers``), figures and the report (``figures``,
``report``), the dashboard, the exported best trial (``export``, ``weights``) and its retraining
(``retrain``).
"""
