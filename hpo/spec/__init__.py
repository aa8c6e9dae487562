"""The study spec: a YAML file parsed into validated dataclasses.

A spec says what to try (``search_space``, ``sampler``, ``pruner``), on what task (``task``)
and for how long (``budget``). Every error names the file, the key path and what was expected,
e.g. ``search_spaces/x.yaml: search_space.lr.low: expected a number > 0, got -1``.

The spec is stored whole in the study (``Spec.to_dict``), so a worker on another machine needs
only the study name and the storage URL.
"""

from hpo.spec._adapter import ADAPTER_PARAMS, LORA_PRESETS, AdapterSpec, lora_targets
from hpo.spec._budget import BudgetSpec
from hpo.spec._components import PRUNER_OPTIONS, SAMPLER_OPTIONS, ComponentSpec
from hpo.spec._hyperparameters import (
    AUGMENTATIONS,
    FREEZE_POLICIES,
    HYPERPARAMETERS,
    IMAGE_PARAMS,
    IMBALANCE_REMEDIES,
    OPTIMIZERS,
    SCHEDULES,
    Hyperparameter,
    ParamSpec,
)
from hpo.spec._parse import load_spec, parse_spec
from hpo.spec._sample import suggest
from hpo.spec._schema import ResourcesSpec, Spec, max_epochs
from hpo.spec._study import (
    METRICS,
    OBJECTIVES,
    LatencySpec,
    StudySection,
    natural_direction,
)
from hpo.spec._task import load_entrypoint, resolve_model
from hpo.spec._task_spec import TASK_KINDS, TaskSpec
from hpo.spec._tracking import TrackingSpec
from hpo.spec._warm_start import FAMILIES, Family, WarmStartSpec, family_of

__all__ = [
    "ADAPTER_PARAMS",
    "LORA_PRESETS",
    "AdapterSpec",
    "lora_targets",
    "FAMILIES",
    "AUGMENTATIONS",
    "FREEZE_POLICIES",
    "HYPERPARAMETERS",
    "IMAGE_PARAMS",
    "IMBALANCE_REMEDIES",
    "METRICS",
    "OBJECTIVES",
    "OPTIMIZERS",
    "PRUNER_OPTIONS",
    "SAMPLER_OPTIONS",
    "SCHEDULES",
    "TASK_KINDS",
    "BudgetSpec",
    "ComponentSpec",
    "Family",
    "Hyperparameter",
    "LatencySpec",
    "ParamSpec",
    "ResourcesSpec",
    "Spec",
    "StudySection",
    "TaskSpec",
    "TrackingSpec",
    "WarmStartSpec",
    "natural_direction",
    "family_of",
    "load_entrypoint",
    "load_spec",
    "max_epochs",
    "parse_spec",
    "resolve_model",
    "suggest",
]
