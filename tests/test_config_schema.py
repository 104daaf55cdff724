"""One definition of each sampler and guidance field (#27): the config schema is made from the checked spec
(SamplerSpec, GuidanceSetting), and the YAML groups set only what differs from it, so no two places hold a
default that could drift apart.

Each test fails with its rule broken: a hand-written SamplerConfig with steps 50 or clip_x0 true (the state before
#27) fails the first; `eta: 0.0` or `scale: 0.0` restated in conf/sampler/ddim.yaml or conf/guidance/unguided.yaml
fails the second (checked by editing the files while writing it); a registered sampler without its YAML, or a
YAML naming no registered sampler, fails the third."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from cguide.config import GuidanceConfig, SamplerConfig
from cguide.diffusion import SAMPLERS, SamplerSpec
from cguide.guidance import GuidanceSetting
from helpers.config import compose_cfg

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = {"sampler": (SamplerSpec, SamplerConfig, SamplerSpec.from_config),
          "guidance": (GuidanceSetting, GuidanceConfig, GuidanceSetting.from_config)}


def _defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.name == "source":
            continue
        v = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_config_schema_is_the_spec(group):
    spec, schema, _ = GROUPS[group]
    assert _defaults(schema) == _defaults(spec)
    assert list(_defaults(schema)) == list(_defaults(spec))  # same fields, same order


@pytest.mark.parametrize("path", sorted(CONF.glob("sampler/*.yaml")) + sorted(CONF.glob("guidance/*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_yaml_sets_only_what_differs_from_the_spec(path, tmp_path):
    group = path.parent.name
    spec, _, from_config = GROUPS[group]
    values = yaml.safe_load(path.read_text()) or {}
    defaults = _defaults(spec)
    assert set(values) <= set(defaults), f"{path.name}: keys {sorted(set(values) - set(defaults))} are no fields"
    restated = sorted(k for k, v in values.items() if v == defaults[k] and not (group == "sampler" and k == "name"))
    assert not restated, f"{path.name} restates the spec's defaults of {restated}: drop them (one definition)"
    cfg = compose_cfg("sample", [f"{group}={path.stem}"], tmp_path)
    made = from_config(cfg[group])
    direct = spec(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    assert made == direct and OmegaConf.to_container(cfg[group]) == {**defaults, **values}


def test_every_registered_sampler_has_its_yaml():
    names = {p.stem: (yaml.safe_load(p.read_text()) or {}).get("name") for p in CONF.glob("sampler/*.yaml")}
    assert all(stem == name for stem, name in names.items()), names
    assert sorted(names) == sorted(SAMPLERS)
