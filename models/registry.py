"""The one registry of model kinds: a config union discriminated by `kind`, and `build(cfg)`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
from pydantic import Field, TypeAdapter

from models.autoencoders import (AE, DAE, AEConfig, ContractiveAE, ContractiveAEConfig, ConvAE, ConvAEConfig,
                                 DAEConfig, SkipDAE, SkipDAEConfig)
from models.checkpoints import load_state, read_config
from models.vaes import CVAE, VAE, CVAEConfig, VAEConfig

MODELS: dict[type, type[torch.nn.Module]] = {
    ConvAEConfig: ConvAE, SkipDAEConfig: SkipDAE,                              # image denoisers
    AEConfig: AE, DAEConfig: DAE, ContractiveAEConfig: ContractiveAE, VAEConfig: VAE, CVAEConfig: CVAE}   # the family

ModelConfig = Annotated[ConvAEConfig | SkipDAEConfig | AEConfig | DAEConfig | ContractiveAEConfig | VAEConfig
                        | CVAEConfig, Field(discriminator="kind")]
_adapter = TypeAdapter(ModelConfig)


def parse_config(data: dict) -> ModelConfig:
    """Validate a config dict (an unknown key or kind is an error, not a silent default)."""
    return _adapter.validate_python(data)


def build(cfg: ModelConfig) -> torch.nn.Module:
    return MODELS[type(cfg)](cfg)


def load_model(folder: Path) -> torch.nn.Module:
    """A model folder -> the model in eval mode, in float32 on the CPU (weights verified by sha256)."""
    model = build(parse_config(read_config(folder)["model"]))
    model.load_state_dict({k: v.float() for k, v in load_state(folder).items()})
    return model.eval()
