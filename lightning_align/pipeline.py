"""MultiStageTrainer: run the stages of one composed config in order, handing model directories on.

Stages hand over files, not objects: each writes `runs/<name>/<stage>/` (a Hugging Face directory) and is marked
done in `state.json` with its identity (a hash of its effective config and of what it reads: the identities of the
earlier stages whose output it loads, the contents of the user's files), so running the same command again skips
finished stages and a change anywhere reruns exactly the stages that depend on it.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from lightning_align.config import PipelineSection, RunSection, interpolated_keys, validate_dataclass
from lightning_align.errors import ConfigError, Interrupted, NonFiniteError
from lightning_align.eval.divergence import divergence_warnings
from lightning_align.eval.report import write_run_report
from lightning_align.interrupt import sigint_raises_interrupted
from lightning_align.models.blocks import check_model_type
from lightning_align.models.checkpoint import read_model_type
from lightning_align.models.loading import model_dir_problem
from lightning_align.models.spec import ModelSpec
from lightning_align.rank_zero import run_on_rank_zero
from lightning_align.run_lock import remove_stale_temps, run_lock
from lightning_align.run_state import read_state
from lightning_align.stage_checkpoints import StageCheckpoints
from lightning_align.stage_identity import InputHashes, stage_identity
from lightning_align.stages import ACTIONS, StageContext
from lightning_align.stages.input_models import check_input_models
from lightning_align.stages.lightning_stage import init_arg_names, reshaping_callbacks
from lightning_align.stages.loggers import LoggerSection, check_installed, stage_loggers
from lightning_align.strict_json import finite_or_null, write_atomic

log = logging.getLogger(__name__)
TOP_LEVEL_KEYS = {"run", "model", "data", "trainer", "logger", "pipeline", "stages"}
# How the run-level model trains, handed to every later stage that trains (not what it is: that is the previous output).
TRAINING_KEYS = ("lora", "quantization", "gradient_checkpointing")
# How the run-level model loads, handed to every later stage: its outputs ship the same code (config auto_map).
LOADING_KEYS = ("trust_remote_code",)


def is_rank_zero() -> bool:
    """True outside distributed runs and on global rank 0 (DDP/FSDP launch the same command once per rank)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    if is_rank_zero():
        write_atomic(path, payload)


def check_lora_shape(model: dict[str, Any], config: dict[str, Any], name: str) -> None:
    """LoRA wraps linear layers in PEFT modules that width pruning cannot slice and block removal cannot take out, so
    a stage that trains adapters (its own `lora` or the run's, handed on by `TRAINING_KEYS`) may not reshape."""
    reshaping = reshaping_callbacks(config)
    if model.get("lora") is not None and reshaping:
        raise ConfigError(f"stages.{name}.model.init_args.model.lora",
                          f"LoRA adapters cannot be sliced or removed by the reshaping callback at stages.{name}.{reshaping[0]}; "
                          "train this stage without lora")


class MultiStageTrainer:
    """Plans (validates every stage) before running any, then runs the stages that are not done yet."""

    def __init__(self, cfg: DictConfig | dict[str, Any]) -> None:
        try:
            self.config: dict[str, Any] = (OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
                                           if isinstance(cfg, DictConfig) else copy.deepcopy(cfg))
        except MissingMandatoryValue as err:
            raise ConfigError(str(err.full_key), "required but missing (give it as an override, e.g. key=value)") from None
        self.data_references = interpolated_keys(
            OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else cfg, "data")
        unknown = set(self.config) - TOP_LEVEL_KEYS
        if unknown:
            raise ConfigError(sorted(unknown)[0], f"unknown top-level key (expected {sorted(TOP_LEVEL_KEYS)})")
        self.run_section: RunSection = validate_dataclass(RunSection, self.config.get("run", {}), "run")
        self.run_dir = Path(self.run_section.dir) / self.run_section.name
        self.logger_section: LoggerSection = validate_dataclass(LoggerSection, self.config.get("logger", {}), "logger")
        check_installed(self.logger_section)
        self.stages = self.plan()
        self.state()  # a corrupt state file is refused here, before `run` writes anything

    def plan(self) -> list[StageContext]:
        """The effective config of every stage, validated; raises `ConfigError` before any work."""
        run_model = validate_dataclass(ModelSpec, self.config.get("model", {}), "model")
        problem = model_dir_problem(Path(run_model.path)) if run_model.path is not None else None
        if problem is not None:
            raise ConfigError("model.path", f"'{run_model.path}' {problem}")
        validate_dataclass(PipelineSection, self.config.get("pipeline") or {}, "pipeline")
        order = self.config["pipeline"]["stages"]
        if not order:
            raise ConfigError("pipeline.stages", "must map at least one stage name to an action")
        declared = self.config.get("stages") or {}
        contexts, previous, written = [], None, []
        for name, action in order.items():
            if action not in ACTIONS:
                raise ConfigError(f"pipeline.stages.{name}", f"unknown action '{action}' (one of {sorted(ACTIONS)})")
            if name not in declared:
                raise ConfigError(f"pipeline.stages.{name}", f"no config under 'stages.{name}'")
            config = self._effective(name, declared[name], previous, ACTIONS[action].lightning, action == "fit")
            start = (config.get("model") or {}).get("init_args", {}).get("model") if ACTIONS[action].lightning else None
            if isinstance(start, dict):
                validate_dataclass(ModelSpec, start, f"stages.{name}.model.init_args.model")
                check_lora_shape(start, config, name)
            self._check_family(config, name)
            check_input_models(config, f"stages.{name}", written)
            ACTIONS[action].check(config, f"stages.{name}")
            contexts.append(StageContext(name, config, previous, self.run_dir / name, self.run_dir))
            if ACTIONS[action].writes_model:
                previous = self.run_dir / name
                written.append(previous)
        self._check_data_keys(contexts)
        return contexts

    def _check_data_keys(self, contexts: list[StageContext]) -> None:
        """A run-level `data:` key must reach a stage: taken by one of their datamodules or interpolated into a
        stage config (`${data.seed}`); anything else (a typo, a key of a stage that is not in the run) is refused."""
        accepted = set().union(*(init_arg_names(ctx.config.get("data")) for ctx in contexts))
        for key in self.config.get("data") or {}:
            if key not in accepted and key not in self.data_references:
                raise ConfigError(f"data.{key}", f"no stage of this pipeline reads it (their datamodules take "
                                  f"{', '.join(sorted(accepted)) or 'nothing'}, and no stage interpolates it)")

    def _check_family(self, config: dict[str, Any], name: str) -> None:
        """A stage whose callbacks cut blocks or neurons needs a family with a block view: refuse others from the
        run model's `config.json`, before any weights are read (a built model is LLaMA)."""
        path = (self.config.get("model") or {}).get("path")
        reshaping = reshaping_callbacks(config)
        if reshaping and path is not None and (Path(path) / "config.json").is_file():
            try:
                check_model_type(read_model_type(path))
            except ConfigError as err:
                raise ConfigError(f"stages.{name}.{reshaping[0]}", f"{err.problem}; model.path is '{path}'") from None

    def _effective(self, name: str, stage: dict[str, Any], previous: Path | None, lightning: bool,
                   trains: bool) -> dict[str, Any]:
        """Fill a stage config from the run level: trainer defaults, seed, starting model (and, for a stage that
        trains, how: `TRAINING_KEYS`), shared data settings."""
        config = copy.deepcopy(stage)
        if not lightning:
            return config
        trainer = {**(self.config.get("trainer") or {}), **(config.get("trainer") or {})}
        trainer.setdefault("default_root_dir", str(self.run_dir / "logs" / name))
        trainer["logger"] = stage_loggers(self.logger_section, trainer.get("logger"), self.run_dir,
                                          self.run_section.name, name)
        config["trainer"] = trainer
        config.setdefault("seed_everything", self.run_section.seed)
        model = config.get("model")
        if "model" in init_arg_names(model):
            init_args = model.setdefault("init_args", {})
            run_model = dict(self.config.get("model") or {})
            start = run_model if previous is None else {"path": str(previous)}
            if previous is not None:
                handed_on = LOADING_KEYS + TRAINING_KEYS if trains else LOADING_KEYS
                start.update({key: run_model[key] for key in handed_on if run_model.get(key)})
            init_args["model"] = {**start, **(init_args.get("model") or {})}
        data = config.get("data")
        accepted = init_arg_names(data)
        for key, value in (self.config.get("data") or {}).items():
            if key in accepted:
                data.setdefault("init_args", {}).setdefault(key, value)
        return config

    def state(self) -> dict[str, Any]:
        """Which stages are done; a file that is not what `run` writes is refused rather than guessed at."""
        path = self.run_dir / "state.json"
        return read_state(path) if path.is_file() else {"done": {}}

    def run(self) -> dict[str, dict[str, float]]:
        """Run every stage whose identity (config and inputs, `stage_identity`) is not the one recorded as done;
        returns each stage's metrics (the warnings of each stage are in `state()`).

        Only rank zero locks the run directory and writes to it; every rank makes the same skip decisions.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with run_lock(self.run_dir) if is_rank_zero() else nullcontext(), sigint_raises_interrupted():
            if is_rank_zero():
                for path in remove_stale_temps(self.run_dir):
                    log.info("removed %s, left by a process that no longer runs", path)
                OmegaConf.save(OmegaConf.create({**self.config, "stages": {c.name: c.config for c in self.stages}}),
                               self.run_dir / "config.yaml")
            state, hashes = self.state(), InputHashes(self.run_dir)
            for ctx in self.stages:
                self._run_stage(ctx, state, hashes)
            if is_rank_zero():
                write_run_report(self.run_dir, [c.name for c in self.stages])
        return {c.name: state["done"][c.name]["metrics"] for c in self.stages}

    def _run_stage(self, ctx: StageContext, state: dict[str, Any], hashes: InputHashes) -> None:
        """Run one stage unless done with the same identity; record it in `state` (and state.json) when it ends."""
        identity = stage_identity(ctx, state["done"], hashes)
        if is_rank_zero():
            hashes.save()
        action = self.config["pipeline"]["stages"][ctx.name]
        every = self.run_section.checkpoint_every_n_steps if action == "fit" else 0  # only training has steps
        checkpoints = StageCheckpoints.of(self.run_dir, ctx.name, identity, every)
        done = state["done"].get(ctx.name)
        if done and done.get("identity") == identity and ctx.output_dir.is_dir():
            log.info("stage %s already done, skipping", ctx.name)
            if is_rank_zero():
                checkpoints.clear()  # left by a kill between recording the stage and deleting them
            return
        log.info("stage %s (%s) -> %s", ctx.name, action, ctx.output_dir)
        if is_rank_zero():
            checkpoints.prepare()
        try:
            run, staged = ACTIONS[action].run, dataclasses.replace(ctx, checkpoints=checkpoints)
            # a Lightning stage runs on every rank; the others on rank zero alone
            metrics = run(staged) if ACTIONS[action].lightning else run_on_rank_zero(lambda: run(staged))
        except Interrupted:
            raise Interrupted(ctx.name) from None
        except NonFiniteError as err:
            raise err.in_stage(ctx.name) from None
        warnings = divergence_warnings(metrics)
        metrics, nulled = finite_or_null(metrics)
        warnings += [f"{key} is {value}; state.json records it as null" for key, value in nulled.items()]
        for warning in warnings:
            log.warning("WARNING stage %s: %s", ctx.name, warning)
        state["done"][ctx.name] = {"identity": identity, "action": action, "metrics": metrics, "warnings": warnings}
        _write_json(self.run_dir / "state.json", state)
        if is_rank_zero():
            checkpoints.clear()
