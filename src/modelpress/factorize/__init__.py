"""Low-rank factorization and compact design.

- :func:`svd_linear`: a Linear layer as two thinner ones (Denton et al. 2014; Xue et al. 2013).
- :func:`tucker2_conv`: a convolution as 1x1 -> kxk -> 1x1 (Kim et al. 2016, the seeds' Tucker student).
- :func:`cp_conv`: a convolution as 1x1 -> depthwise kx1 -> depthwise 1xk -> 1x1 (Lebedev et al. 2015;
  Jaderberg et al. 2014's separable filters).
- :func:`factorize_`: any of them over a whole model, ranks by energy, FLOP budget or hand, with save/load.
- :func:`to_depthwise_separable_` / :func:`separable_student`: MobileNets' depthwise-separable blocks
  (Howard et al. 2017), to be distilled from the original.

Fine-tune afterwards with ``modelpress.train.train`` or ``modelpress.distill.distill``.
"""

from modelpress.factorize.core import (
    FactorizeConfig,
    FactorizeReport,
    Method,
    ShrinkConfig,
    eligible,
    factorize_,
    select_layers,
)
from modelpress.factorize.cp import CPResult, cp_als, cp_conv, cp_reconstruct, replay_cp
from modelpress.factorize.separable import (
    SeparableReport,
    rank1_split,
    replay_separable,
    separable_conv,
    separable_student,
    to_depthwise_separable_,
)
from modelpress.factorize.svd import energy_rank, replay_svd, svd_linear
from modelpress.factorize.tucker import mode_spectra, replay_tucker, tucker2_conv

__all__ = [
    "CPResult",
    "FactorizeConfig",
    "FactorizeReport",
    "Method",
    "SeparableReport",
    "ShrinkConfig",
    "cp_als",
    "cp_conv",
    "cp_reconstruct",
    "eligible",
    "energy_rank",
    "factorize_",
    "mode_spectra",
    "rank1_split",
    "replay_cp",
    "replay_separable",
    "replay_svd",
    "replay_tucker",
    "select_layers",
    "separable_conv",
    "separable_student",
    "svd_linear",
    "to_depthwise_separable_",
    "tucker2_conv",
]
