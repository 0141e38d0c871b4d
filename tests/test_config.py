import pytest
import yaml

from components.core.errors import ConfigError
from components.core.config import ROOT, PPOConfig, defaults, load_config, params_hash, parse_override, render_params, set_params


def test_params_yaml_is_the_rendering_of_the_config_models():
    # Each default and its description are written once, in components/core/config.py; params.yaml
    # (what DVC tracks) is their rendering (`rlhf params --defaults > params.yaml`) and loads back to them.
    assert (ROOT / "params.yaml").read_text() == render_params()
    assert load_config(ROOT / "params.yaml").to_dict() == defaults()
    assert yaml.safe_load((ROOT / "params.yaml").read_text())["ppo_ptx"] == {"ptx_coef": 1.0}  # a variant: its delta


def test_a_variant_section_is_its_base_plus_its_own_differences():
    cfg = load_config()
    assert cfg.ppo.ptx_coef == 0.0 and cfg.ppo_ptx.ptx_coef == 1.0  # plain PPO, and PPO-ptx
    assert {k: v for k, v in cfg.ppo_ptx.model_dump().items() if k != "ptx_coef"} == \
        {k: v for k, v in cfg.ppo.model_dump().items() if k != "ptx_coef"}
    both = load_config(overrides=["ppo.lr=3e-5"])  # a change to the base reaches the variant
    assert both.ppo.lr == both.ppo_ptx.lr == 3e-5
    one = load_config(overrides=["ppo_ptx.lr=2e-5"])  # a change to the variant stays there
    assert one.ppo.lr == PPOConfig().lr and one.ppo_ptx.lr == 2e-5
    assert load_config(overrides=["common.profile=test"]).ppo_ptx.updates == 2  # profile deltas reach it too
    with pytest.raises(ConfigError, match="ppo_ptx.ptx_coef must be > 0"):
        load_config(overrides=["ppo_ptx.ptx_coef=0"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("sft_typo.lr=1", "unknown section 'sft_typo'"),
        ("data.n_comparison=5", "unknown key 'data.n_comparison' (did you mean 'data.n_comparisons'?)"),
        ("data.n_users=abc", "data.n_users: Input should be a valid integer"),
        ("data.k_max=10", "data.k_max: Input should be less than or equal to 9"),
        ("data.label_noise=-0.1", "data.label_noise: Input should be greater than or equal to 0"),
        ("common.eval_fraction=1.5", "common.eval_fraction: Input should be less than 1"),
        ("base_model.tiny=maybe", "base_model.tiny: Input should be a valid boolean"),
        ("common.profile=nope", "unknown profile 'nope'"),
        ("data.k_min=7", None),  # valid alone
        ("nodot=1", "expected section.key=value"),
    ],
)
def test_bad_values_are_refused_naming_the_key(override, message):
    if message is None:
        load_config(overrides=[override])
        return
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[override])
    assert message in str(e.value)


def test_cross_field_rule_names_the_keys():
    with pytest.raises(ConfigError, match="k_min .7. must be <= k_max .5."):
        load_config(overrides=["data.k_min=7", "data.k_max=5"])


def test_unknown_key_in_params_file_names_file_and_key(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("common:\n  seed: 1\nvalidate:\n  max_prompt_char: 5\n")
    with pytest.raises(ConfigError, match=r"params.yaml: unknown key 'validate.max_prompt_char'"):
        load_config(p)


def test_profile_applies_deltas_and_overrides_win():
    cfg = load_config(overrides=["common.profile=test", "data.n_users=30"])
    assert cfg.base_model.tiny is True
    assert cfg.data.n_comparisons == 48  # from profiles/test.yaml
    assert cfg.data.n_users == 30  # -S beats the profile
    assert cfg.data.k_max == 9  # untouched keys keep params.yaml's value


def test_override_values_are_parsed_as_yaml():
    assert parse_override("sft.lr=1e-5") == ("sft", "lr", 1e-5)
    assert parse_override("a.b=true") == ("a", "b", True)
    assert parse_override("a.b=hello") == ("a", "b", "hello")


def test_config_is_frozen_and_hash_tracks_section_values():
    cfg = load_config()
    with pytest.raises(Exception):
        cfg.data.n_users = 3
    other = load_config(overrides=["data.n_users=3"])
    assert cfg.section_hash("data") != other.section_hash("data")
    assert cfg.section_hash("validate") == other.section_hash("validate")
    assert params_hash({"a": 1}) == params_hash({"a": 1})


def test_set_params_edits_in_place_keeps_comments_and_refuses_bad(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text((ROOT / "params.yaml").read_text())
    (tmp_path / "profiles").mkdir()
    before = p.read_text()
    with pytest.raises(ConfigError):
        set_params(p, ["data.n_users=-5"])
    assert p.read_text() == before  # nothing written
    assert set_params(p, ["data.n_users=30"]) == ["data.n_users"]
    text = p.read_text()
    assert "n_users: 30" in text and "# Seed of every random generator" in text
    assert load_config(p).data.n_users == 30


def test_rlhf_run_refuses_an_override_that_its_profile_would_shadow(capsys):
    """`rlhf run --profile quick -S ppo.updates=16` wrote 16 into params.yaml, and every stage then applied the
    profile's 3 over it: the override was silently lost. Now it is refused, naming key and profile file."""
    from components.apps import cli
    from components.core.config import PARAMS_FILE, shadowed_by_profile
    from components.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"-S ppo.updates, sft.max_steps: profile 'quick' sets them \(.*quick.yaml\)"):
        shadowed_by_profile(["common.profile=quick", "ppo.updates=16", "sft.max_steps=2", "ppo.kl_coef=0.1"])
    shadowed_by_profile(["common.profile=quick", "ppo.kl_coef=0.1"])  # a key the profile leaves alone
    shadowed_by_profile(["ppo.updates=16"])  # no profile selected (params.yaml's is 'default')
    before = PARAMS_FILE.read_text()
    assert cli.main(["run", "--profile", "quick", "-S", "ppo.updates=16"]) == 2
    assert "the override would be ignored" in capsys.readouterr().err and PARAMS_FILE.read_text() == before
