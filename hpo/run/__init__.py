"""The run: the workers that pull trials (``worker``), the launcher of one per GPU (``launch``,
``slots``), Slurm and Kubernetes (``cluster``), and the checks before a study is written
(``preflight``).
"""
