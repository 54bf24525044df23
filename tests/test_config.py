"""Config loading and validation (docs/model.md §4, §15): every error names the key."""

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


# --------------------------------------------------------------- issue 26: one encoder

SHIPPED_HASHES = {
    "defaults": "ba65df3c3efb",
    "atlas_base": "fedbdb396a31",
    "atlas_tracking": "8c896c832693",
    "instability": "d6d85d23d7a8",
    "plateau": "48fa8618f6a7",
    "regime_divergence": "b9a325e28f69",
    "regime_learning": "f3d1220a5a2e",
    "regime_noise_floor": "3199614769ee",
    "regime_plateau": "827d5962571d",
    "regime_triad": "96ac77168fc9",
    "sanity": "c891fe1b8a80",
    "seed_plateau": "e805af95299c",
}
"""config_hash of every shipped config (and the defaults), recorded before issue 26 moved
the hash onto the canonical encoder: old runs keep their checkpoints and ids."""
SHIPPED_SWEEP_IDS = {
    "atlas": "6b88a607f8557a47",
    "atlas_tracking": "2e16f0bb879cdeec",
    "demo": "00bf7571f42f44a9",
    "scaling": "16e613a59378ffed",
    "stepC": "f69a0288ebf4a146",
    "triad_alpha": "bd4bb7c787553bd3",
    "triad_search": "968a8691d55c418f",
}
"""SHA-256 (16 hex digits) of the newline-joined run ids of each shipped sweep's plan,
recorded at the same time; atlas, demo and stepC re-recorded when issue 24 gave run ids one
number format (shortest round-trip: ``alpha_w1000`` from YAML and --grid alike), which
renamed their ids once (the config hashes above did not move); scaling added with the
plateau-laws sweep (issue 27); atlas and atlas_tracking re-recorded when they gained
``seeds: [0, 1, 2]`` (issue 23: label agreement over seeds; each seed-0 run keeps the config
hash of the former one-seed run, its id gains ``_seed0``)."""


def test_shipped_configs_and_sweeps_keep_their_hashes_and_run_ids():
    import hashlib

    from tdlens.config import shipped_configs
    from tdlens.sweeps.spec import load_spec, make_plan

    got = {"defaults": RunConfig().config_hash()}
    got |= {p.stem: load_config(p).config_hash() for p in shipped_configs().glob("*.yaml")}
    assert got == SHIPPED_HASHES
    ids = {}
    for path in sorted((shipped_configs() / "sweeps").glob("*.yaml")):
        joined = "\n".join(r.run_id for r in make_plan(load_spec(path)))
        ids[path.stem] = hashlib.sha256(joined.encode()).hexdigest()[:16]
    assert ids == SHIPPED_SWEEP_IDS


def test_a_key_added_later_at_its_default_leaves_the_hash_unchanged(monkeypatch):
    """A section or nested key registered in ADDED_LATER is left out of the hash at its
    default and counts at any other value (the table other slices extend)."""
    from tdlens import config as config_mod
    from tdlens.config import hash_config_data

    data = RunConfig().to_dict()
    base = hash_config_data(data)
    monkeypatch.setitem(config_mod.ADDED_LATER, "new_section", {"kind": "constant"})
    monkeypatch.setitem(config_mod.ADDED_LATER, "probes.fixed_point.new_knob", 3)
    later = {**data, "new_section": {"kind": "constant"}}
    later["probes"] = {**data["probes"], "fixed_point": {**data["probes"]["fixed_point"]}}
    later["probes"]["fixed_point"]["new_knob"] = 3
    assert hash_config_data(later) == base == RunConfig().config_hash()
    later["new_section"] = {"kind": "cosine"}
    assert hash_config_data(later) != base
    later["new_section"] = {"kind": "constant"}
    later["probes"]["fixed_point"]["new_knob"] = 4
    assert hash_config_data(later) != base


@pytest.mark.parametrize("key", ["rho_clip", "theta_radius"])
def test_inf_round_trips_through_config_json_and_keeps_its_hash(key):
    """inf is written as the token "inf" (JSON has no infinity; null means no clip), read
    back as inf, and the hash of the reloaded config is the hash of the original."""
    import json

    cfg = load_config(None, [f"{key}=.inf"])
    assert getattr(cfg, key) == float("inf")
    text = json.dumps(cfg.to_dict(), allow_nan=False)
    assert f'"{key}": "inf"' in text
    again = parse_config(json.loads(text))
    assert again == cfg and again.config_hash() == cfg.config_hash()
    assert cfg.config_hash() != RunConfig().config_hash()
    assert load_config(None, [f"{key}=inf"]) == cfg
    if key == "rho_clip":
        assert cfg.effective_rho_clip is None


@pytest.mark.parametrize(
    "override, key, allowed",
    [
        ("rho_clip=nan", "rho_clip", "nan is not allowed"),
        ("theta_radius=.nan", "theta_radius", "nan is not allowed"),
        ("gamma=.nan", "gamma", "0 <= x <= 1"),
        ("sigma_mu=1e308", "sigma_mu", "0 < x <= 1e+06"),
        ("alpha_w=.inf", "alpha_w", "0 <= x <= 1e+12"),
        ("alpha_w=1e308", "alpha_w", "0 <= x <= 1e+12"),
        ("env.torus_size=1e308", "env.torus_size", "0 < x <= 1e+06"),
        ("outer_iters=99999999999", "outer_iters", "1 <= x <= 2147483647"),
    ],
)
def test_out_of_range_values_name_the_key_and_the_range(override, key, allowed):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert message.startswith(f"{key}:") and allowed in message, message


def test_every_numeric_key_has_its_range_in_docs_model():
    """docs/model.md's range table is the one numeric_ranges() reads off the fields, and
    every numeric leaf key of the config is in it."""
    from pathlib import Path

    from tdlens.config import numeric_ranges
    from tdlens.sweeps.spec import config_keys

    ranges = numeric_ranges()
    numeric = [
        k
        for k in config_keys()
        if isinstance(_leaf(RunConfig().to_dict(), k), int | float)
        and not isinstance(_leaf(RunConfig().to_dict(), k), bool)
    ]
    assert set(numeric) <= set(ranges), sorted(set(numeric) - set(ranges))
    text = (Path(__file__).resolve().parents[1] / "docs" / "model.md").read_text()
    for key, allowed in ranges.items():
        assert f"| `{key}` | {allowed} |" in text, key


def _leaf(data, dotted):
    for part in dotted.split("."):
        data = data[part]
    return data


def test_one_distribution_chain_is_refused_with_the_reason():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["probes.distribution.chains=1"])
    message = str(info.value)
    assert message.startswith("probes.distribution.chains:") and "36%" in message
    assert load_config(None, ["probes.distribution.chains=2"]).probes.distribution.chains == 2


def _bomb(levels: int, fan: int) -> str:
    lines = ["a0: &a0 [x, x]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * fan) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "text, why",
    [
        (_bomb(12, 9), "expand to more than 100000 nodes"),
        ("a: &a 1\nb: [" + ", ".join(["*a"] * 1001) + "]\n", "more than 1000 alias uses"),
        ("a: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested deeper than 50"),
        ("a: &a [*a]\n", "recursive alias"),
        ("# " + "x" * 1_000_001 + "\n", "larger than 1000000 bytes"),
    ],
)
def test_hostile_yaml_is_refused_before_expansion(tmp_path, text, why):
    """A ~300-byte alias bomb (9**11 leaves), 1,001 aliases, 100k-deep nesting, a
    recursive alias and a 1 MB file: each one ConfigError naming the file, fast."""
    import time

    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert time.perf_counter() - t0 < 5
    assert str(path) in str(info.value) and why in str(info.value), str(info.value)


def test_yaml_within_the_bounds_loads_with_its_aliases(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("env: &e {p_mix: 0.1}\nprobes: {every: 3}\nalpha_w: 0.5\n" + _bomb(3, 3))
    from tdlens.config import read_yaml

    data = read_yaml(path)
    assert data["env"] == {"p_mix": 0.1} and data["a2"] == [[["x", "x"]] * 3] * 3


def test_a_directory_device_or_fifo_as_config_says_what_it_is(tmp_path):
    import os

    from tdlens.config import find_config, read_yaml

    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    for path, kind in ((tmp_path, "a directory"), ("/dev/zero", "a character device")):
        with pytest.raises(ConfigError, match=kind):
            find_config(str(path))
    for path, kind in ((fifo, "a FIFO"), (tmp_path, "a directory")):
        with pytest.raises(ConfigError, match=kind):
            read_yaml(path)
        with pytest.raises(ConfigError, match=kind):
            find_config(str(path))


@pytest.mark.parametrize(
    "name", ["x/../../../../escape", "..", "a..b", "-rf", ".hidden", "x" * 201, "a\x1b[31mred", ""]
)
def test_run_and_sweep_names_follow_one_rule(name):
    from tdlens.config import check_name

    with pytest.raises(ConfigError, match=r"^name: use letters"):
        check_name(name)
    assert check_name("alpha_w1e+04_sigma_pi0.6-efbfbe5b0093") == (
        "alpha_w1e+04_sigma_pi0.6-efbfbe5b0093"
    )
