"""Guidance (plain torch): the gradient of log p(y | x_t, t), the sigma_t variants, the scale schedules, the
methods (classifier, cond, cfg, cond_classifier), the guidance setting / batch spec, and the guided-eps
wrappers that any sampler takes in place of eps_theta."""

from .gradient import classifier_log_prob_grad, entropy_factor, softmax_entropy, x0_space_grad
from .guided import ClassifierGuidance, combine
from .methods import METHODS, MethodEps, check_method, register_method
from .schedules import SCHEDULES, check_schedule, register_schedule, schedule_weight
from .spec import GRAD_AT, NONFINITE_MODES, GuidanceSetting, GuidanceSpec, check_grad_at, check_sigma_interval
from .variants import VARIANTS, check_variant, register_variant, variant_factor

__all__ = ["classifier_log_prob_grad", "entropy_factor", "softmax_entropy", "x0_space_grad", "ClassifierGuidance",
           "combine", "METHODS", "MethodEps", "check_method", "register_method", "SCHEDULES", "check_schedule",
           "register_schedule", "schedule_weight", "GRAD_AT", "NONFINITE_MODES", "GuidanceSetting", "GuidanceSpec",
           "check_grad_at", "check_sigma_interval", "VARIANTS", "register_variant", "variant_factor", "check_variant"]
