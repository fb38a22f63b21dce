"""The one registry of model kinds: a config union discriminated by `kind`, and `build(cfg)`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
from pydantic import Discriminator, Tag, TypeAdapter

from models.autoencoders import ConvAE, ConvAEConfig, SkipDAE, SkipDAEConfig
from models.checkpoints import load_state, read_config
from models.family import (FAMILY, AEConfig, ContractiveAEConfig, DAEConfig, DenseCVAEConfig,  # noqa: F401
                           DenseVAEConfig)
from models.vaes import CVAE, VAE, CVAEConfig, VAEConfig

MODELS: dict[type, type[torch.nn.Module]] = {ConvAEConfig: ConvAE, SkipDAEConfig: SkipDAE, VAEConfig: VAE,
                                             CVAEConfig: CVAE, **{c: m for c, m in FAMILY.values()}}


def _tag(data) -> str:
    """The union member a config is: its kind, except that a `vae` or `cvae` over tokens (with a `vocab`: the
    level and music models) is the token-grid one of vaes.py, and over pixels or vectors the family's."""
    get = data.get if isinstance(data, dict) else lambda k: getattr(data, k, None)
    kind = get("kind")
    return f"{kind}-tokens" if kind in ("vae", "cvae") and get("vocab") is not None else str(kind)


ModelConfig = Annotated[
    Annotated[ConvAEConfig, Tag("conv_ae")] | Annotated[SkipDAEConfig, Tag("skip_dae")]
    | Annotated[VAEConfig, Tag("vae-tokens")] | Annotated[CVAEConfig, Tag("cvae-tokens")]
    | Annotated[AEConfig, Tag("ae")] | Annotated[DAEConfig, Tag("dae")]
    | Annotated[ContractiveAEConfig, Tag("contractive_ae")] | Annotated[DenseVAEConfig, Tag("vae")]
    | Annotated[DenseCVAEConfig, Tag("cvae")],
    Discriminator(_tag)]
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
