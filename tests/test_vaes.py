"""The token-grid VAEs: shapes for grids and rolls, save/load, seeded sampling, conditions, a toy set learnt,
and the content-addressed train stage."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoints import save_model
from models.likelihoods import categorical
from models.registry import build, load_model, parse_config
from models.trainer import TrainConfig, train

PRETRAINED = Path(__file__).resolve().parents[1] / "models" / "pretrained"
TINY = {"widths": [8, 16], "latent": 4}


def toy(n=64, rows=5, cols=9, vocab=4, seed=0):
    """Four distinct grids repeated: easy to learn exactly; cond = which one."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randint(0, vocab, (4, rows, cols), generator=g)
    which = torch.arange(n) % 4
    return protos[which], which[:, None]


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("kind", ["vae", "cvae"])
def test_build_train_save_load_same_output(kind, dims, tmp_path):
    x, cond = toy()
    cfg = parse_config({"kind": kind, "vocab": 4, "shape": [5, 9], "dims": dims, **TINY,
                        **({"cond": [4]} if kind == "cvae" else {})})
    torch.manual_seed(0)
    model = build(cfg)
    batch = (x, cond) if kind == "cvae" else x
    result = train(model, lambda gen: batch, batch, TrainConfig(steps=2, epoch_steps=1, batch_size=64, select="elbo"),
                   tmp_path / "ckpt")
    assert result.steps == 2 and set(result.best) == {"loss", "neg_loss", "nll", "elbo", "kl", "acc"}
    c = cond if kind == "cvae" else None
    mu, logvar = model.encode(x, c)
    assert mu.shape == logvar.shape == (64, 4)
    assert model.decode(mu, c).shape == (64, 4, 5, 9)                # (B, vocab, rows, cols), odd sizes cropped back
    save_model(model, tmp_path / "m", cfg.model_dump(mode="json"))
    loaded = load_model(tmp_path / "m")
    assert loaded.cfg == cfg
    assert torch.equal(model.reconstruct(x, c), loaded.reconstruct(x, c))


def test_sampling_is_seeded_and_in_vocab():
    model = build(parse_config({"kind": "vae", "vocab": 6, "shape": [14, 28], **TINY})).eval()
    a = model.sample(8, torch.Generator().manual_seed(3))
    b = model.sample(8, torch.Generator().manual_seed(3))
    c = model.sample(8, torch.Generator().manual_seed(4), greedy=False)
    assert a.shape == (8, 14, 28) and torch.equal(a, b)
    assert c.min() >= 0 and c.max() < 6


def test_cvae_needs_its_condition():
    model = build(parse_config({"kind": "cvae", "vocab": 3, "shape": [4, 8], "cond": [2, 4], **TINY}))
    with pytest.raises(ValueError, match="needs a condition"):
        model.sample(2, torch.Generator())
    one = model.sample(5, torch.Generator().manual_seed(0), cond=torch.tensor([[1, 3]]))   # one condition for all
    assert one.shape == (5, 4, 8)


def test_unknown_config_key_is_an_error():
    with pytest.raises(ValueError, match="latnet"):
        parse_config({"kind": "vae", "vocab": 3, "shape": [4, 4], "latnet": 8})


@pytest.mark.parametrize("dims", [1, 2])
def test_toy_set_is_learnt(dims, tmp_path):
    """A real (tiny) fit: four grids must be reconstructed almost exactly after 150 steps."""
    x, _ = toy()
    torch.manual_seed(0)
    model = build(parse_config({"kind": "vae", "vocab": 4, "shape": [5, 9], "dims": dims, "widths": [16, 32],
                                "latent": 4, "beta": 0.1}))
    train(model, lambda gen: x, x, TrainConfig(steps=150, epoch_steps=50, batch_size=64, lr=3e-3, select="acc"),
          tmp_path / "ckpt")
    assert (model.reconstruct(x) == x).float().mean() > 0.95


def test_train_windows_stage_is_cached_by_content():
    from flows.train import train_windows

    x, cond = toy()
    xs, cs = x.numpy(), cond.numpy()
    args = dict(slug="toy", upstream=(), data={"set": "toy"}, train=(xs, cs), val=(xs[:8], cs[:8]),
                model={"kind": "cvae", **TINY}, training={"steps": 2, "epoch_steps": 1, "batch_size": 8},
                progress=False)
    trained = train_windows(**args, job="levels")
    folder = trained.folder
    config = json.loads((folder / "config.json").read_text())
    assert config["model"]["vocab"] == 4 and config["model"]["shape"] == [5, 9] and config["model"]["cond"] == [4]
    assert (folder / "curve.png").stat().st_size > 0 and not trained.cached
    assert config["data"]["job"] == "levels" and "job" not in trained.manifest["config"]["data"]   # not in the key
    stamp = (folder / "manifest.json").stat().st_mtime_ns
    hit = train_windows(**args, job="music")                            # the job is recorded, not hashed
    assert hit.cached and hit.folder == folder                         # cache hit: nothing rebuilt
    assert (folder / "manifest.json").stat().st_mtime_ns == stamp
    changed = dict(args, train=(np.where(xs == 0, 1, xs), cs))          # other content, same shapes and names
    assert train_windows(**changed, job="levels").folder != folder


def test_latent_walk_stays_on_the_prior_with_the_asked_correlation():
    from models.latent import latent_walk

    z = latent_walk(4000, 8, torch.Generator().manual_seed(0), rho=0.7)
    assert z.shape == (4000, 8)
    assert abs(z.std().item() - 1) < 0.05                          # every step is again N(0, I)
    lag1 = (z[1:] * z[:-1]).mean().item() / z.var().item()
    assert abs(lag1 - 0.7) < 0.05
    assert torch.equal(z, latent_walk(4000, 8, torch.Generator().manual_seed(0), rho=0.7))


def test_spread_narrows_the_prior_draws_and_the_walk():
    """spread s: z ~ N(0, s^2 I) for samples and walks alike (levels sample --spread); s -> 0 decodes the prior's
    centre, so every sample is the same grid, while s = 1 draws varied ones from the same generator."""
    from models.latent import latent_walk

    z = latent_walk(4000, 8, torch.Generator().manual_seed(0), rho=0.7, spread=0.5)
    assert abs(z.std().item() - 0.5) < 0.03
    assert abs((z[1:] * z[:-1]).mean().item() / z.var().item() - 0.7) < 0.05
    torch.manual_seed(0)
    net = build(parse_config({"kind": "vae", "vocab": 4, "shape": [5, 9], **TINY})).eval()
    with torch.no_grad():
        wide = net.sample(16, torch.Generator().manual_seed(1), greedy=True)
        narrow = net.sample(16, torch.Generator().manual_seed(1), greedy=True, spread=1e-6)
        centre = net.sample(1, None, z=torch.zeros(1, 4), greedy=True)
    assert len({g.numpy().tobytes() for g in wide}) > 1
    assert (narrow == centre).all()


def test_ar_head_sees_only_earlier_steps_and_round_trips(tmp_path):
    cfg = parse_config({"kind": "vae", "vocab": 7, "shape": [2, 20], "dims": 1, **TINY, "ar": 3})
    assert cfg.model_dump()["ar"] == 3 and "ar" not in parse_config({**cfg.model_dump(), "ar": 0}).model_dump()
    with pytest.raises(ValueError, match=">= 0 steps"):
        parse_config({**cfg.model_dump(), "ar": -1})
    with pytest.raises(ValueError, match="dims=1"):
        build(parse_config({"kind": "vae", "vocab": 7, "shape": [4, 4], "dims": 2, "ar": 3}))
    torch.manual_seed(0)
    net = build(cfg).eval()
    x, z = torch.randint(0, 7, (5, 2, 20)), torch.randn(5, 4)
    with torch.no_grad():
        logits = net.decode(z)
        base = net.head._ar_logits(logits, x)
        later = x.clone()
        later[..., 10:] = (later[..., 10:] + 1) % 7                   # change step 10 and after
        moved = net.head._ar_logits(logits, later)
        assert torch.equal(base[..., :11], moved[..., :11])           # steps <= 10 never read step 10
        assert not torch.equal(base[..., 11:14], moved[..., 11:14])   # steps 11-13 see it (ar = 3)
        drawn = net.draw(logits)                                      # step by step, most likely token
        assert torch.equal(net.head._ar_logits(logits, drawn).argmax(1), drawn)
    save_model(net, tmp_path / "m", cfg.model_dump(mode="json"))
    assert torch.equal(load_model(tmp_path / "m").sample(3, torch.Generator().manual_seed(0), greedy=False),
                       net.sample(3, torch.Generator().manual_seed(0), greedy=False))


def test_categorical_draws_follow_the_probabilities_and_never_a_zero_one():
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]]).expand(3, 40_000, -1, -1)
    got = categorical(probs, torch.Generator().manual_seed(0))                       # (3, 40000, 2)
    assert got.shape == (3, 40_000, 2)
    share = torch.bincount(got[..., 0].flatten(), minlength=5) / got[..., 0].numel()
    assert torch.allclose(share, probs[0, 0, 0], atol=0.005), share                 # 120k draws: sd 0.0015
    assert (got[..., 1] == 4).all()


def test_ar_head_keeps_neighbouring_steps_together(tmp_path):
    """Pairs of steps that are (1, 1) or (2, 2) at random, 8 pairs a row, with a latent too small to hold them:
    cells drawn independently given z split a pair about half the time; the ar head (one step back) keeps
    them together. The same joint structure as two 16th notes."""
    g = torch.Generator().manual_seed(0)
    x = (1 + torch.randint(0, 2, (512, 1, 8), generator=g)).repeat_interleave(2, -1)     # (512, 1, 16)
    together = {}
    for ar in (0, 1):
        torch.manual_seed(0)
        net = build(parse_config({"kind": "vae", "vocab": 3, "shape": [1, 16], "dims": 1, "widths": [16, 32],
                                  "latent": 1, "beta": 1.0, "ar": ar}))
        train(net, lambda gen: x[torch.randint(0, 512, (64,), generator=gen)], x[:64],
              TrainConfig(steps=150, epoch_steps=50, batch_size=64, lr=3e-3, select="elbo"), tmp_path / f"ckpt{ar}")
        s = net.eval().sample(400, torch.Generator().manual_seed(1), greedy=False)
        together[ar] = (s[..., 0::2] == s[..., 1::2]).float().mean().item()
    assert together[1] > 0.95 and together[0] < 0.8, together


def test_column_tokens_round_trip_and_every_drawn_column_is_a_real_one(tmp_path):
    """units="columns": the grid API is unchanged (grids in, grids out), the network sees one token per column,
    a column outside the vocabulary is read as its nearest one, and the ar head can continue from a prefix."""
    table = [[0, 0, 1], [0, 2, 1], [3, 2, 1], [0, 0, 0]]                    # 4 columns of 3 rows, tiles 0..3
    cfg = parse_config({"kind": "vae", "vocab": 4, "shape": [3, 8], "dims": 1, **TINY, "ar": 2, "columns": table})
    assert "columns" not in parse_config({**cfg.model_dump(), "columns": []}).model_dump()   # old stage keys kept
    with pytest.raises(ValueError, match="columns"):
        build(parse_config({**cfg.model_dump(), "columns": [[0, 0, 9]]}))                   # tile out of range
    torch.manual_seed(0)
    net = build(cfg).eval()
    t = torch.tensor([[[0, 1, 2, 3, 3, 2, 1, 0]]])
    grid = net.head.to_grid(t)                                                   # (1, 3, 8)
    assert grid.shape == (1, 3, 8) and grid[0, :, 2].tolist() == [3, 2, 1]
    assert torch.equal(net.head.to_tokens(grid), t)
    odd = grid.clone()
    odd[0, 0, 1] = 3                                                        # [3, 2, 1]: now column 2 exactly
    odd[0, 1, 4] = 1                                                        # [0, 1, 0]: nearest is [0, 0, 0]
    assert net.head.to_tokens(odd)[0, 0, 1].item() == 2 and net.head.to_tokens(odd)[0, 0, 4].item() == 3
    with torch.no_grad():
        s = net.sample(64, torch.Generator().manual_seed(0), greedy=False)  # (64, 3, 8) tile grids
        assert s.shape == (64, 3, 8)
        vocab = {tuple(c) for c in table}
        assert {tuple(c) for c in s.transpose(1, 2).reshape(-1, 3).tolist()} <= vocab
        m = net.metrics(s, torch.Generator().manual_seed(0))                  # grids in, as the trainer gives
        assert m["elbo"] < 0 and m["kl"] > 0 and 0 < m["acc"] <= 1
        logits = net.decode(torch.randn(4, 4))
        for prefix in (grid[:, :, :2], grid[:, :, 5:]):                    # 2 and 3 columns (only ar = 2 are read)
            drawn = net.draw(logits, prefix=prefix.expand(4, -1, -1))
            # greedy draws are the teacher-forced argmax with the prefix's columns as the steps before step 0
            seq = torch.cat([net.head.to_tokens(prefix[:, :, -2:]).expand(4, -1, -1), net.head.to_tokens(drawn)], -1)
            forced = net.head._ar_logits(torch.nn.functional.pad(logits, (2, 0)), seq).argmax(1)[..., 2:]
            assert torch.equal(forced, net.head.to_tokens(drawn))
    save_model(net, tmp_path / "m", cfg.model_dump(mode="json"))
    assert torch.equal(load_model(tmp_path / "m").sample(3, torch.Generator().manual_seed(0), greedy=False),
                       net.sample(3, torch.Generator().manual_seed(0), greedy=False))


# Recorded with the token-grid VAE of models/vaes.py as it stood before the family shared one design (main at
# c5cc347): sha256[:16] of 6 greedy samples, 6 drawn at temperature 1 and their reconstructions (seed 0), and
# the validation ELBO and accuracy on those drawn grids (seed 1). The categorical head must give them exactly.
SHIPPED = {
    "mario-vae": ("148b3a2708f3a2dd", "e3086836e1e57360", "eadb1c9af1920a48", -106.008, 0.9588),
    "mario-columns": ("68a471c1aee0f12e", "3f7fe21eed4af782", "13da41dd58389928", -24.0701, 0.7683),
    "mario-cvae": ("3f9caa1b26f72ce5", "2a2fbb3f6e6e3ad5", "431ee56ac1888b5f", -22.9681, 0.9226),
    "music-melody-2bar": ("f8a556b00ef49a51", "11d2f7966d2c8ac4", "48c46a0412eed0e3", -45.2886, 0.9375),
    "music-melody-2bar-key": ("bea9a4fa006bab91", "d25788d918a74e78", "a15dd3f9649b0567", -47.0725, 0.875),
    "music-chorale-4bar-key": ("f81db4f1b21684db", "ff35f1fef96dc27e", "afc37b081c715f85", -187.7491, 0.8574),
}


def _digest(a: torch.Tensor) -> str:
    return hashlib.sha256(a.numpy().astype(np.int64).tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_level_and_music_models_load_and_sample_as_before(name):
    net = load_model(PRETRAINED / name)
    cond = torch.tensor([[i % c for c in net.cfg.cond] for i in range(6)]) if net.cfg.kind == "cvae" else None
    gen = torch.Generator().manual_seed(0)
    greedy = net.sample(6, gen, cond=cond)
    drawn = net.sample(6, gen, cond=cond, greedy=False, temperature=1.0)
    m = net.metrics(drawn if cond is None else (drawn, cond), torch.Generator().manual_seed(1))
    got = (_digest(greedy), _digest(drawn), _digest(net.reconstruct(drawn, cond)), round(m["elbo"], 4),
           round(m["acc"], 4))
    assert got == SHIPPED[name]
    saved = json.loads((PRETRAINED / name / "config.json").read_text())["model"]
    assert net.cfg.model_dump(mode="json") == saved            # the config (so every stage key) is unchanged
