"""Classifier guidance (plain torch): the gradient of log p(y | x_t, t), the sigma_t variants and
the guided-eps wrapper that any sampler takes in place of eps_theta."""

from .gradient import classifier_log_prob_grad
from .guided import ClassifierGuidance, NONFINITE_MODES
from .variants import VARIANTS, register_variant, variant_factor, check_variant

__all__ = ["classifier_log_prob_grad", "ClassifierGuidance", "NONFINITE_MODES", "VARIANTS",
           "register_variant", "variant_factor", "check_variant"]
