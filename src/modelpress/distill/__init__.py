"""Knowledge distillation: losses, teachers, ``distill`` and the family built on it.

- logit level: :func:`distill` (Hinton soft targets, Ba & Caruana logit regression, early-stopped KD)
- blending (Geras et al.): :func:`blend` distils the gamma-mixture of an LSTM and a CNN into one CNN
- feature level: :func:`fitnets` (hints), :func:`attention_transfer`, :func:`fsp_distill`, over
  :class:`FeatureTap` (forward hooks by layer name on any ``nn.Module``)
- losses behind one signature ``loss(student_io, teacher_io, targets)``: the logit-level registry
  (:func:`~modelpress.distill.losses.logit_loss_names`; a new loss is one ``distill/loss_<name>.py``)
  and the feature losses (:mod:`modelpress.distill.feature_losses`)
- tabular mimicry and trees (scikit-learn) live in :mod:`modelpress.tabular`, transformer
  distillation (Hugging Face) in :mod:`modelpress.text`; this package imports neither
- schemes: :func:`born_again`, :func:`self_compress`, :func:`teacher_assistant_chain`,
  :func:`mutual_learning` (codistillation), :func:`train_specialists`, the omitted-class experiment
"""

from modelpress.distill.attention import AttentionConfig, AttentionTransferObjective, attention_transfer
from modelpress.distill.blend import BlendConfig, BlendResult, GammaChoice, blend, blend_teacher, choose_gamma, score_gammas
from modelpress.distill.core import DistillConfig, DistillMethod, DistillationObjective, check_compatible, distill
from modelpress.distill.feature_losses import attention_map, attention_transfer_loss, fsp_loss, fsp_matrix, hint_loss
from modelpress.distill.features import FeatureTap, feature_shapes, forward_until, layer_names, match_layers
from modelpress.distill.fsp import FSPConfig, FSPObjective, default_fsp_pairs, fsp_distill
from modelpress.distill.hints import HintConfig, HintRegressor, fit_hints, fitnets
from modelpress.distill.losses import (LogitLossSpec, ModelIO, logit_loss_names, logit_regression_loss, make_logit_loss,
                                       mixed_distillation_loss, soft_target_loss)
from modelpress.distill.mutual import Cohort, MutualConfig, MutualObjective, MutualResult, mutual_learning, mutual_pull
from modelpress.distill.omitted import (apply_class_bias_, final_linear, fit_class_bias, omitted_class_experiment,
                                        omitted_class_report, without_class)
from modelpress.distill.schemes import BornAgainResult, TeacherAssistantResult, born_again, self_compress, teacher_assistant_chain
from modelpress.distill.specialists import SpecialistConfig, SpecialistEnsemble, confusable_clusters, train_specialists
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
    "BlendConfig", "BlendResult", "GammaChoice", "blend", "blend_teacher", "choose_gamma", "score_gammas",
    "AttentionConfig", "AttentionTransferObjective", "BornAgainResult", "Cohort", "DistillConfig", "DistillMethod",
    "DistillationObjective", "EnsembleTeacher", "FSPConfig", "FSPObjective", "FeatureTap", "HintConfig", "HintRegressor",
    "ModuleTeacher", "MutualConfig", "MutualObjective", "MutualResult", "SpecialistConfig", "SpecialistEnsemble",
    "StoredTeacher", "Teacher", "TeacherAssistantResult", "TeacherStore", "apply_class_bias_", "as_teacher",
    "attention_map", "attention_transfer", "attention_transfer_loss", "born_again", "build_teacher_store",
    "check_compatible", "confusable_clusters", "default_fsp_pairs", "distill", "feature_shapes", "final_linear",
    "fit_class_bias", "fit_hints", "fitnets", "forward_until", "fsp_distill", "fsp_loss", "fsp_matrix", "hint_loss",
    "layer_names", "logit_regression_loss", "match_layers", "mixed_distillation_loss", "mutual_learning", "mutual_pull",
    "omitted_class_experiment", "omitted_class_report", "precompute_teacher", "self_compress", "soft_target_loss",
    "teacher_assistant_chain", "train_specialists", "without_class",
    "LogitLossSpec", "ModelIO", "logit_loss_names", "make_logit_loss",
]
