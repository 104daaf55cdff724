"""Classifier guidance (plain torch): the gradient of log p(y | x_t, t), the sigma_t variants, the
guidance setting / batch spec, and the guided-eps wrapper that any sampler takes in place of eps_theta."""

from .gradient import classifier_log_prob_grad
from .guided import ClassifierGuidance, combine
from .spec import NONFINITE_MODES, GuidanceSetting, GuidanceSpec
from .variants import VARIANTS, check_variant, register_variant, variant_factor

__all__ = ["classifier_log_prob_grad", "ClassifierGuidance", "combine", "NONFINITE_MODES", "GuidanceSetting",
           "GuidanceSpec", "VARIANTS", "register_variant", "variant_factor", "check_variant"]
