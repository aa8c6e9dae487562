"""``hpo.session`` inside the training frameworks' own loops: a Hugging Face ``Trainer``
callback (``hpo.integrations.transformers``) and a Lightning callback
(``hpo.integrations.lightning``). Each imports its framework when it is imported itself, never
before: importing ``hpo`` loads neither."""
