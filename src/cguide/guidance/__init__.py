"""Guidance (plain torch): the gradient of log p(y | x_t, t), the sigma_t variants, the methods (classifier,
cond, cfg, cond_classifier), the guidance setting / batch spec, and the guided-eps wrappers that any
sampler takes in place of eps_theta."""

from .gradient import classifier_log_prob_grad
from .guided import ClassifierGuidance, combine
from .methods import METHODS, MethodEps, check_method, register_method
from .spec import NONFINITE_MODES, GuidanceSetting, GuidanceSpec
from .variants import VARIANTS, check_variant, register_variant, variant_factor

__all__ = ["classifier_log_prob_grad", "ClassifierGuidance", "combine", "METHODS", "MethodEps", "check_method",
           "register_method", "NONFINITE_MODES", "GuidanceSetting",
           "GuidanceSpec", "VARIANTS", "register_variant", "variant_factor", "check_variant"]
