"""Config loading and validation (SPEC 4, 15): every error names the key."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tdlens.config import ConfigError, RunConfig, apply_overrides, load_config, parse_config


def _error(data) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return str(info.value)


def test_defaults_validate_and_shipped_configs_load():
    cfg = RunConfig()
    assert cfg.env.feature_dim == 128 and cfg.env.actor_feature_dim == 32
    seed = load_config("configs/seed_plateau.yaml")
    assert seed.train_step_scale == pytest.approx(2.5e-05)
    assert seed.probes.fixed_point.tol == 1e-8  # YAML 1.0e-8 is a number
    from pathlib import Path

    shipped = sorted(Path("configs").glob("*.yaml"))
    assert len(shipped) >= 7
    for path in shipped:
        load_config(path)
    assert not load_config("configs/instability.yaml").sigma_condition_ok
    assert load_config("configs/instability.yaml").effective_rho_clip is None


def test_unknown_key_suggests_the_close_one():
    msg = _error({"alpha_ww": 0.1})
    assert "unknown key 'alpha_ww'" in msg and "did you mean 'alpha_w'" in msg
    msg = _error({"env": {"feature_dimm": 10}})
    assert "env.feature_dimm" in msg and "env.feature_dim" in msg
    msg = _error({"probes": {"fixed_point": {"ridg": 0.1}}})
    assert "probes.fixed_point.ridge" in msg


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"sigma_mu": 0}, "sigma_mu"),
        ({"sigma_pi": -0.1}, "sigma_pi"),
        ({"gamma": 1.5}, "gamma"),
        ({"horizon": 0}, "horizon"),
        ({"K_mc": -1}, "K_mc"),
        ({"rho_clip": -2}, "rho_clip"),
        ({"env": {"feature_dim": 4}}, "env.feature_dim"),
        ({"trajectories": "many"}, "trajectories"),
        ({"bar_phi": "exact", "env": {"clip_action": True}}, "bar_phi"),
        ({"bar_phi": "exact", "squash_action": True}, "bar_phi"),
        ({"step_normalization": "sum"}, "step_normalization"),
        ({"probes": {"fixed_point": {"batch_size": 1}}}, "probes.fixed_point.batch_size"),
        ({"probes": {"distribution": {"num_samples": 3}}}, "probes.distribution.num_samples"),
        ({"probes": {"stability": {"power_iters": 0}}}, "probes.stability.power_iters"),
        ({"probes": {"fixed_point": {"ridge": -1}}}, "probes.fixed_point.ridge"),
    ],
)
def test_bad_values_name_the_key(data, key):
    assert key in _error(data)


def test_overrides_parse_yaml_values():
    data = apply_overrides({}, ["env.p_mix=0.01", "probes.fixed_point.tol=1e-7", "rho_clip=null"])
    cfg = parse_config(data)
    assert cfg.env.p_mix == 0.01 and cfg.probes.fixed_point.tol == 1e-7
    assert cfg.rho_clip is None and cfg.effective_rho_clip is None
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["novalue"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"gamma": 0.5}, ["gamma.x=1"])


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("gamma: [1,\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"missing\.yaml"):
        load_config(tmp_path / "missing.yaml")
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(top)


def test_config_hash_ignores_execution_keys_only():
    a = RunConfig()
    assert a.config_hash() == RunConfig(name="other", threads=1, checkpoint_every=3).config_hash()
    assert a.config_hash() != RunConfig(seed=1).config_hash()


_KEYS = st.sampled_from(
    ["gamma", "alpha_w", "sigma_mu", "horizon", "env", "probes", "K_mc", "bar_phi", "zzz", "seed"]
)
_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.floats(allow_nan=True)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3),
    max_leaves=6,
)


@given(st.dictionaries(_KEYS, _VALUES, max_size=5) | _VALUES)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_malformed_configs_never_raise_anything_but_config_error(data):
    try:
        parse_config(data)
    except ConfigError as exc:
        assert str(exc)


@given(st.text(max_size=30))
@settings(max_examples=300, deadline=None)
def test_malformed_overrides_never_raise_anything_but_config_error(text):
    try:
        load_config(None, [text])
    except ConfigError as exc:
        assert str(exc)


def test_config_round_trips_through_json():
    cfg = load_config("configs/seed_plateau.yaml")
    again = parse_config(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again == cfg
