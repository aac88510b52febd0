"""Hydra composition of a run config, with Hydra's errors turned into `ConfigError`s that name the key (and a YAML
file that does not parse or is not UTF-8 into a `DataError` naming the file and line)."""
from __future__ import annotations

import copy
import re
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
import yaml

from lightning_align.data.text_file import read_utf8
from lightning_align.errors import ConfigError, DataError

_OVERRIDE_KEY = re.compile(r"Could not (?:override|append to|delete from) '([^']+)'")
_FULL_KEY = re.compile(r"full_key: (\S+)")


def _stage_dir(name: str, *, _root_: DictConfig) -> str:
    """`${stage:<name>}` in a config = the output directory of stage <name> of this run."""
    return str(Path(_root_.run.dir) / _root_.run.name / name)


def compose(config_dir: str | Path, config_name: str, overrides: list[str]) -> DictConfig:
    """Compose `<config_dir>/<config_name>.yaml` with overrides; errors name the offending key or file.

    Interpolations are resolved once to surface their errors here, but returned unresolved: planning reads them to
    tell which run-level keys a stage uses (`${data.corpus}`)."""
    config_dir = Path(config_dir).resolve()
    if not (config_dir / f"{config_name}.yaml").is_file():
        raise ConfigError("--config-name", f"{config_dir / (config_name + '.yaml')} not found")
    if not OmegaConf.has_resolver("stage"):
        OmegaConf.register_new_resolver("stage", _stage_dir)
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=overrides)
        OmegaConf.resolve(copy.deepcopy(cfg))
    except (HydraException, OmegaConfBaseException) as err:
        text = str(err)
        match = _OVERRIDE_KEY.search(text) or _FULL_KEY.search(text)
        key = match.group(1) if match else "overrides"
        problem = text.strip().splitlines()[-1] if match is None else text.strip().splitlines()[0]
        if match and match.re is _OVERRIDE_KEY:
            problem = "no such key (check the spelling; use +key=value to add a new one)"
        raise ConfigError(key, problem, config_dir / f"{config_name}.yaml") from None
    except yaml.MarkedYAMLError as err:  # a YAML file of the tree that does not parse; the mark says where
        mark = err.problem_mark
        raise DataError(mark.name, f"is not valid YAML: {err.problem} (column {mark.column + 1})",
                        line=mark.line + 1) from None
    except UnicodeDecodeError:  # the reader does not say which file: find it
        for path in sorted(config_dir.rglob("*.yaml")):
            read_utf8(path)
        raise
    return cfg
