"""hpo: hyperparameter optimization for fine-tuning pretrained models.

The data flow is spec -> storage -> study -> launch -> worker -> job -> report, one module each.
"""

__version__ = "0.1.0"
