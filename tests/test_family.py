"""The autoencoder family: each kind on one design, its defining term, the data it reads, the commands."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flows.family import KINDS, load_examples, measure, train_family
from formats.idx import BadIDX, read_idx, write_idx
from models.autoencoders import jacobian_norm2
from models.registry import build, load_model, parse_config

REPO = Path(__file__).resolve().parents[1]
# ../shared/data/mnist beside the checkout; AEFLOW_MNIST for a checkout elsewhere (a git worktree)
MNIST = Path(os.environ.get("AEFLOW_MNIST") or REPO.parent / "shared" / "data" / "mnist")
TINY = {"shape": [1, 8, 8], "body": "mlp", "widths": [16, 8], "latent": 2}


@pytest.fixture(scope="module")
def digits():
    return load_examples("digits")


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_trains_saves_and_loads_to_the_same_output(kind, digits):
    trained = train_family(kind, examples=digits, steps=2, widths=(16, 8), progress=False)
    folder = trained.folder
    net = load_model(folder)
    again = load_model(folder)
    x = torch.from_numpy(digits.x[:5])
    cond = torch.from_numpy(digits.labels[:5, None]) if kind == "cvae" else None
    with torch.no_grad():
        mu, logvar = net.encode(x, cond)
        assert mu.shape == (5, 2) and (logvar is None) == (kind not in ("vae", "cvae"))
        y = net.draw(net.decode(mu, cond))
        assert y.shape == x.shape and 0 <= float(y.min()) and float(y.max()) <= 1
        assert torch.equal(y, again.draw(again.decode(again.encode(x, cond)[0], cond)))
    hit = train_family(kind, examples=digits, steps=2, widths=(16, 8), progress=False)
    assert not trained.cached and hit.cached and hit.folder == folder and hit.manifest == trained.manifest


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("body, shape", [("mlp", [5]), ("conv", [2, 12]), ("conv", [1, 9, 7])])
def test_every_kind_on_every_body_and_dense_head(kind, body, shape):
    """mlp over vectors, conv 1-D over (channels, length) series, conv 2-D over odd-sized images: the code,
    the decoded shape and a gradient to every weight, with a Gaussian head."""
    cfg = parse_config({"kind": kind, "shape": shape, "body": body, "widths": [8, 16], "latent": 3,
                        "head": "gaussian", **({"cond": [4]} if kind == "cvae" else {})})
    net = build(cfg)
    x, cond = torch.randn(4, *shape), (torch.tensor([[0], [1], [2], [3]]) if kind == "cvae" else None)
    loss = net.loss((x, cond) if cond is not None else x, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in net.parameters())
    mu, _ = net.encode(x, cond)
    assert mu.shape == (4, 3) and net.draw(net.decode(mu, cond)).shape == x.shape
    assert parse_config(cfg.model_dump(mode="json")) == cfg                     # the saved config reads back


def test_token_options_belong_to_the_categorical_head_and_dae_needs_real_values():
    with pytest.raises(ValueError, match="options of the categorical head"):
        parse_config({"kind": "vae", "shape": [1, 8, 8], "head": "bernoulli", "ar": 2})
    with pytest.raises(ValueError, match="a dae perturbs"):
        parse_config({"kind": "dae", "shape": [4, 8], "vocab": 5})
    cfg = parse_config({"kind": "vae", "shape": [1, 8, 8], "body": "mlp"})
    assert cfg.head == "bernoulli" and "vocab" not in cfg.model_dump() and "dims" not in cfg.model_dump()


def test_data_is_ingested_once_into_a_stage_keyed_by_content(tmp_path, monkeypatch):
    from PIL import Image

    from flows.family import ingest_examples

    monkeypatch.setenv("AEFLOW_OUTPUTS", str(tmp_path / "outputs"))
    data = tmp_path / "shapes"
    for label in ("a", "b"):
        (data / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((10 + i, 12), 40 * i + (100 if label == "b" else 0), np.uint8)).save(
                data / label / f"{i}.png")
    (data / "a" / "broken.png").write_bytes(b"not a png")
    ingest = ingest_examples(str(data), size=6)
    ex = load_examples(str(data), size=6)
    again = ingest_examples(str(data), size=6)
    assert again.cached and again.folder == ingest.folder and ex.about["ingest"] == ingest.folder.name   # cached
    assert ex.x.shape == (6, 1, 6, 6) and sorted(ex.labels) == [0, 0, 0, 1, 1, 1] and len(ex.val) == 1
    assert [b["file"] for b in ingest.manifest["bad"]] == ["a/broken.png"] and ex.about["classes"] == ["a", "b"]
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(data / "b" / "0.png")          # new content: a new stage
    assert ingest_examples(str(data), size=6).folder != ingest.folder


def test_beta_scales_the_kl_term():
    x = torch.rand(6, 1, 8, 8)
    one = build(parse_config({"kind": "vae", **TINY}))
    four = build(parse_config({"kind": "vae", "beta": 4, **TINY}))
    four.load_state_dict(one.state_dict())
    with torch.no_grad():
        t1, t4 = one.terms(x, None, None), four.terms(x, None, None)
    assert torch.equal(t4["kl"], t1["kl"]) and torch.equal(t4["nll"], t1["nll"]) and float(t1["kl"].min()) > 0
    assert torch.allclose(four.objective(t4) - one.objective(t1), 3 * t1["kl"])


def test_the_contractive_penalty_is_positive_and_lowers_the_jacobian(digits):
    x = torch.from_numpy(digits.x[digits.val[:50]])
    norms = {}
    for kind in ("ae", "contractive_ae"):
        net = load_model(train_family(kind, examples=digits, steps=300, widths=(32, 16), progress=False).folder)
        if kind == "contractive_ae":
            assert float(net.terms(x, None, torch.Generator().manual_seed(0))["contraction"].detach().min()) > 0
        norms[kind] = float(jacobian_norm2(lambda v: net.encode(v)[0], x).detach().mean())
    assert norms["contractive_ae"] < 0.5 * norms["ae"], norms


def test_hutchinson_estimates_the_exact_jacobian_norm():
    net = build(parse_config({"kind": "ae", **TINY}))
    x = torch.rand(4, 1, 8, 8)
    exact = jacobian_norm2(lambda v: net.encode(v)[0], x)
    estimates = torch.stack([jacobian_norm2(lambda v: net.encode(v)[0], x, torch.Generator().manual_seed(s))
                             for s in range(400)]).detach()
    assert torch.allclose(estimates.mean(0), exact, rtol=0.2)


def test_a_cvae_decodes_the_condition():
    net = build(parse_config({"kind": "cvae", "cond": [10], **TINY}))
    z = torch.zeros(1, 2)
    with torch.no_grad():
        a, b = net.decode(z, torch.tensor([[3]])), net.decode(z, torch.tensor([[7]]))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="needs a condition"):
        net.decode(z)


def test_idx_round_trip_and_clear_errors(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (3, 4, 5), np.uint8)
    for name in ("x-idx3-ubyte", "x-idx3-ubyte.gz"):
        write_idx(tmp_path / name, images)
        assert np.array_equal(read_idx(tmp_path / name), images)
    raw = (tmp_path / "x-idx3-ubyte").read_bytes()
    (tmp_path / "cut").write_bytes(raw[:-7])
    with pytest.raises(BadIDX, match=r"cut: truncated .* 3 x 4 x 5 = 60 values, the file holds 53"):
        read_idx(tmp_path / "cut")
    (tmp_path / "png").write_bytes(b"\x89PNG\r\n\x1a\n" + raw)
    with pytest.raises(BadIDX, match=r"png: magic 0x89504e47 is not an IDX file"):
        read_idx(tmp_path / "png")
    (tmp_path / "cut.gz").write_bytes(gzip.compress(raw)[:-12])
    with pytest.raises(BadIDX, match="cut.gz: not readable as IDX"):
        read_idx(tmp_path / "cut.gz")


@pytest.mark.skipif(not MNIST.is_dir(), reason=f"{MNIST} (MNIST test split) is absent")
def test_mnist_is_read_and_split_8000_2000():
    ex = load_examples(str(MNIST))
    assert ex.x.shape == (10000, 1, 28, 28) and (len(ex.train), len(ex.val)) == (8000, 2000)
    assert not set(ex.train) & set(ex.val) and 0 <= ex.x.min() and ex.x.max() == 1
    assert np.bincount(ex.labels).min() > 800                            # all ten digits


def test_measure_reports_codes_kl_and_neighbours(digits):
    row = measure(train_family("vae", examples=digits, steps=2, widths=(16, 8), progress=False).folder, digits)
    assert row["active_units"] in (0, 1, 2) and row["kl"] >= 0 and 0 <= row["knn5"] <= 1 and row["mse"] > 0


def test_compare_writes_one_table_and_its_plots(digits, tmp_path):
    from PIL import Image

    from flows.family import compare_family, summary_table

    report = compare_family("digits", latents=(2,), kinds=("ae", "cvae"), betas=(1, 8), out_dir=str(tmp_path),
                            steps=2, progress=False, widths=(16, 8))
    assert [r["kind"] for r in report["rows"]] == ["pca", "ae", "cvae"] and len(report["beta_sweep"]) == 2
    assert json.loads((tmp_path / "report.json").read_text())["split"]["val"] == 360
    assert Image.open(tmp_path / "codes-2d.png").size == (900, 330)      # PCA, ae, cvae panels of 3 x 3.3 in
    assert Image.open(tmp_path / "beta-sweep.png").size == (900, 360)
    assert summary_table(report).count("\n| ") == 3 + 2 + 1                # rows, betas, the beta table's rule


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "flows.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


@pytest.mark.prefect
def test_family_train_then_sample_through_the_command_line(tmp_path):
    from PIL import Image

    r = _cli("family", "train", "--kind", "cvae", "--steps", "3", "--widths", "16,8", "--name", "tiny-cvae")
    assert r.returncode == 0, r.stdout + r.stderr
    folder = next(line.split()[-1] for line in r.stdout.splitlines() if line.startswith("model "))
    assert Path(folder).name.startswith("tiny-cvae-") and (Path(folder) / "model.safetensors").is_file()
    r = _cli("models", env={"COLUMNS": "200"})                              # listed under its own job
    row = next(line for line in r.stdout.splitlines() if Path(folder).name in line)
    assert [c.strip() for c in row.split("│")[2:5]] == ["family", "trained", "cvae"], row
    r = _cli("family", "sample", "tiny-cvae", tmp_path, "--label", "7", "--n", "9")   # by its name
    assert r.returncode == 0, r.stdout + r.stderr
    png = Image.open(tmp_path / "samples-label7.png")
    assert png.size == (3 * (8 * 12 + 1) + 1,) * 2                          # 3 x 3 cells of 8 px scaled 12x
    r = _cli("family", "sample", "tiny-cvae", tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--label 0..9" in r.stderr, r.stderr
    r = _cli("family", "train", "--kind", "ae", "--beta", "4")
    assert r.returncode == 2 and "only vae and cvae" in r.stderr
