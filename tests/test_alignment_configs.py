"""The alignment stage files are valid Lightning CLI configs, and the ablation switch is where the docs say."""
from pathlib import Path

import pytest
import yaml

from lightning_align.errors import ConfigError
from lightning_align.stages.lightning_stage import check_stage_config

STAGES = Path(__file__).resolve().parents[1] / "conf" / "stages"


@pytest.mark.parametrize("name", ["sft", "reward", "dpo", "mutual_taught"])
def test_stage_file_parses(name):
    check_stage_config(yaml.safe_load((STAGES / f"{name}.yaml").read_text()), f"stages.{name}")


def test_mutual_taught_ablation_switch_and_typos_are_named():
    config = yaml.safe_load((STAGES / "mutual_taught.yaml").read_text())
    assert config["model"]["init_args"]["reward_refresh"] is True
    config["model"]["init_args"]["reward_refresh"] = False
    check_stage_config(config, "stages.mutual_taught")
    config["model"]["init_args"]["reward_refrsh"] = False
    with pytest.raises(ConfigError, match="stages.mutual_taught.model.*reward_refrsh"):
        check_stage_config(config, "stages.mutual_taught")
