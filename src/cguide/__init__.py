"""cguide: classifier guidance for diffusion models.

Core math (plain torch): ``cguide.diffusion``, ``cguide.guidance``, ``cguide.nets``.
Lightning modules and data live in ``cguide.modules`` and ``cguide.data``; Hydra entry points are
``cguide.train``, ``cguide.sample``, ``cguide.sweep`` and ``cguide.pipeline``.
"""

__version__ = "0.1.0"
