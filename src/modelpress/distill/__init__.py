"""Knowledge distillation: losses, teachers and the ``distill`` entry point."""

from modelpress.distill.core import DistillConfig, DistillMethod, DistillationObjective, check_compatible, distill
from modelpress.distill.losses import logit_regression_loss, mixed_distillation_loss, soft_target_loss
from modelpress.distill.teachers import (
    EnsembleTeacher,
    ModuleTeacher,
    StoredTeacher,
    Teacher,
    TeacherStore,
    as_teacher,
    build_teacher_store,
    precompute_teacher,
)

__all__ = [
    "DistillConfig",
    "DistillMethod",
    "DistillationObjective",
    "EnsembleTeacher",
    "ModuleTeacher",
    "StoredTeacher",
    "Teacher",
    "TeacherStore",
    "as_teacher",
    "build_teacher_store",
    "check_compatible",
    "distill",
    "logit_regression_loss",
    "mixed_distillation_loss",
    "precompute_teacher",
    "soft_target_loss",
]
