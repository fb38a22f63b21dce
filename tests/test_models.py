"""Every model kind builds, trains two steps, saves, loads and gives the same output; sizes, channels, tiles."""

import pytest
import torch

from models.autoencoders import count_parameters
from models.checkpoints import load_state, save_model
from models.inference import _windows, denoise_image
from models.patches import PatchSampler, center_crops
from models import DENOISERS
from models.registry import build, load_model, parse_config
from models.trainer import TrainConfig, train


def images(channels, n=3):
    g = torch.Generator().manual_seed(0)
    return [torch.rand(channels, 40 + 7 * i, 52 - 5 * i, generator=g) for i in range(n)]


@pytest.mark.parametrize("kind", DENOISERS)
@pytest.mark.parametrize("channels", [1, 3])
def test_build_train_save_load_same_output(kind, channels, tmp_path):
    cfg = parse_config({"kind": kind, "channels": channels, "widths": [8, 16], "sigma": [0, 55],
                        **({"blocks": [1, 1]} if kind == "skip_dae" else {})})
    torch.manual_seed(0)
    model = build(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    imgs = images(channels)
    result = train(model, PatchSampler(imgs, 24, 4), center_crops(imgs, 24),
                   TrainConfig(steps=2, epoch_steps=1, patch=24, batch_size=4), tmp_path / "ckpt")
    assert result.steps == 2 and len(result.history) == 2
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items()), "two steps changed nothing"
    save_model(model, tmp_path / "m", cfg.model_dump(mode="json"))
    loaded = load_model(tmp_path / "m")
    assert type(loaded) is type(model) and loaded.cfg == cfg
    x = torch.rand(2, channels, 37, 45)                      # odd size: padded, then cropped back
    with torch.no_grad():
        y1, y2 = model.eval()(x), loaded(x)
    assert y1.shape == x.shape
    assert torch.equal(y1, y2)


def test_unknown_config_key_is_an_error():
    with pytest.raises(ValueError, match="widht"):
        parse_config({"kind": "skip_dae", "widht": [8]})
    with pytest.raises(ValueError):
        parse_config({"kind": "no_such_model"})
    with pytest.raises(ValueError, match="sigma"):
        parse_config({"kind": "skip_dae", "sigma": [50, 10]})


def test_fp16_weights_load_back_close(tmp_path):
    model = build(parse_config({"kind": "skip_dae", "widths": [8, 16], "blocks": [1, 1]}))
    save_model(model, tmp_path / "m", model.cfg.model_dump(mode="json"), dtype=torch.float16)
    assert all(v.dtype == torch.float16 for v in load_state(tmp_path / "m").values())
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert (model.eval()(x) - load_model(tmp_path / "m")(x)).abs().max() < 1e-2


def test_corrupted_weights_are_refused(tmp_path):
    model = build(parse_config({"kind": "conv_ae", "widths": [4]}))
    save_model(model, tmp_path / "m", model.cfg.model_dump(mode="json"))
    path = tmp_path / "m" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF                                         # one flipped byte inside a tensor
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_model(tmp_path / "m")


@pytest.mark.parametrize("broken", ["model.safetensors", "config.json"])
def test_an_invalid_model_file_with_a_matching_checksum_is_one_line_naming_it(tmp_path, broken):
    """The sidecar only proves the bytes are unchanged: bytes that are not safetensors (or a config that is not
    JSON) are a ValueError naming the file. Before: SafetensorError / JSONDecodeError without a file."""
    import hashlib

    model = build(parse_config({"kind": "conv_ae", "widths": [4]}))
    save_model(model, tmp_path / "m", model.cfg.model_dump(mode="json"))
    path = tmp_path / "m" / broken
    path.write_bytes(b"\x00" * 8 + b"not a model")
    sidecar = tmp_path / "m" / "model.safetensors.sha256"
    sidecar.write_text(hashlib.sha256((tmp_path / "m" / "model.safetensors").read_bytes()).hexdigest() + "\n")
    with pytest.raises(ValueError, match=f"{path}: not valid" if broken == "config.json" else
                       f"{path}: not a valid safetensors file") as e:
        load_model(tmp_path / "m")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("length,core,margin", [(10, 4, 2), (100, 32, 8), (33, 64, 16), (129, 64, 16)])
def test_tile_windows_cover_every_pixel_once(length, core, margin):
    covered = torch.zeros(length, dtype=torch.int32)
    sizes = set()
    for w0, w1, c0, c1 in _windows(length, core, margin):
        assert w0 <= c0 < c1 <= w1 and 0 <= w0 and w1 <= length
        covered[c0:c1] += 1
        sizes.add(w1 - w0)
    assert covered.eq(1).all()
    assert len(sizes) == 1                                   # equal windows: tiles batch together


def test_tiled_inference_matches_whole_image_away_from_receptive_field():
    """With a margin wider than the receptive field, tiles give the whole-image result."""
    torch.manual_seed(0)
    model = build(parse_config({"kind": "conv_ae", "widths": [4]})).eval()   # receptive field: a few px
    x = torch.rand(1, 70, 90)
    whole = denoise_image(model, x, tile=512)
    tiled = denoise_image(model, x, tile=16, margin=8, batch=3)
    assert torch.allclose(whole, tiled, atol=1e-5)


def test_self_ensemble_is_exact_for_an_equivariant_model():
    """Flips and rotations undone correctly: a pixel-wise model gives the same output with or without x8."""
    model = torch.nn.Conv2d(1, 1, 1).eval()          # 1x1 convolution: commutes with every flip/rotation
    model.cfg = parse_config({"kind": "skip_dae", "channels": 1})
    x = torch.rand(1, 13, 17)
    assert torch.allclose(denoise_image(model, x, ensemble=True), denoise_image(model, x), atol=1e-6)
    skewed = build(parse_config({"kind": "conv_ae", "widths": [4]})).eval()
    assert not torch.allclose(denoise_image(skewed, x, ensemble=True), denoise_image(skewed, x), atol=1e-4)


def test_gray_model_denoises_colour_per_channel_and_colour_model_refuses_gray():
    gray = build(parse_config({"kind": "skip_dae", "channels": 1, "widths": [8, 16], "blocks": [1, 1]})).eval()
    color = build(parse_config({"kind": "skip_dae", "channels": 3, "widths": [8, 16], "blocks": [1, 1]})).eval()
    x = torch.rand(3, 20, 30)
    per_channel = torch.cat([denoise_image(gray, x[c:c + 1]) for c in range(3)])
    assert torch.allclose(denoise_image(gray, x), per_channel, atol=1e-6)
    with pytest.raises(ValueError, match="gray model"):
        denoise_image(color, torch.rand(1, 20, 30))


def test_default_skip_dae_fits_the_shipping_budget():
    """The default skip_dae fits the shipped-weights budget: under 2 MB as float16."""
    model = build(parse_config({"kind": "skip_dae", "channels": 3}))
    assert count_parameters(model) * 2 < 2_000_000
