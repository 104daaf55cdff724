"""Guidance (plain torch): the gradient of log p(y | x_t, t), the sigma_t variants, the scale schedules, the
methods (classifier, cond, cfg, cond_classifier), the guidance setting / batch spec, the guided-eps
wrappers that any sampler takes in place of eps_theta, and what each row costs in network evaluations."""

from .cost import network_evals
from .gradient import classifier_log_prob_grad, entropy_factor, softmax_entropy, x0_space_grad
from .guided import ClassifierGuidance, combine
from .methods import METHODS, MethodEps, check_method, register_method
from .schedules import SCHEDULES, check_schedule, register_schedule, schedule_weight
from .spec import (GRAD_AT, GRAD_SPACES, NONFINITE_MODES, GuidanceSetting, GuidanceSpec, check_grad_at,
                   check_sigma_interval)
from .variants import VARIANTS, check_variant, register_variant, variant_factor

__all__ = ["classifier_log_prob_grad", "entropy_factor", "softmax_entropy", "x0_space_grad", "ClassifierGuidance",
           "combine", "METHODS", "MethodEps", "check_method", "register_method", "SCHEDULES", "check_schedule",
           "register_schedule", "schedule_weight", "GRAD_AT", "GRAD_SPACES", "network_evals", "NONFINITE_MODES",
           "GuidanceSetting", "GuidanceSpec",
           "check_grad_at", "check_sigma_interval", "VARIANTS", "register_variant", "variant_factor", "check_variant"]
