"""The core every other part builds on: settings, the network, one training step, run folders.

``errors`` (KitError), ``files`` (atomic writes, JSON lines), ``config`` and ``method_config`` (the
``RunConfig`` dataclasses, their YAML loading and the validation of each option), ``config_files``
(the shipped configs, configs named by path or name, YAML with one-line errors), ``model`` (backbone
registry, ``TransferModel``), ``optim`` (optimizers, schedules), ``engine`` (one epoch of training, evaluation),
``runs`` (a run folder's life cycle: staging, lock, checkpoints, publish, the settings check),
``distributed``, ``provenance``, ``class_metrics``, ``tb_log``.

May import: nothing else of the kit (``adafilter_lib.__version__`` aside).
"""
