"""The autoencoder family against PCA, and what each member does (issue 18's benchmark; not a test).

For each set: every kind at code sizes 2 and 8 beside PCA at the same size (held-out reconstruction MSE,
KL and active units for the VAE kinds, the encoder Jacobian's squared Frobenius norm, 5-NN accuracy of the
held-out codes fitted on the training codes, training seconds); the vae's beta sweep at size 8 (rate,
distortion, active units); the cvae's samples (size 2) classified by an RBF SVM trained on the real
training images (bench-only; its own held-out accuracy is printed beside). Models are cached stages, so a
re-run measures without training again (its train seconds are those of the first run).

    .venv/bin/python bench/family.py [--sets digits,mnist] [--mnist ../shared/data/mnist] [--out outputs/bench/family]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from flows.family import compare_family, load_examples, load_family_model, summary_table  # noqa: E402
from flows.settings import outputs_root  # noqa: E402

PER_DIGIT = 100


def cvae_check(folder: str, ex) -> dict:
    """Share of a cvae's samples (PER_DIGIT per label, mean decoding of z ~ N(0, I)) that an RBF SVM trained on
    the real training images classifies as the label asked."""
    from sklearn.svm import SVC

    flat = lambda a: a.reshape(len(a), -1)                                            # noqa: E731
    t0 = time.perf_counter()
    svm = SVC().fit(flat(ex.x[ex.train]), ex.labels[ex.train])
    own = float(svm.score(flat(ex.x[ex.val]), ex.labels[ex.val]))
    net, _ = load_family_model(folder)
    labels = np.repeat(np.arange(net.cfg.cond[0]), PER_DIGIT)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        z = torch.randn(len(labels), net.cfg.latent, generator=gen)
        x = net.draw(net.decode(z, torch.from_numpy(labels[:, None]))).numpy()
    hit = svm.predict(flat(x)) == labels
    return {"classifier": "sklearn SVC (RBF, default C) on the training images", "classifier_val_acc": own,
            "samples": len(labels), "as_asked": float(hit.mean()),
            "worst_label": int(np.argmin([hit[labels == d].mean() for d in range(net.cfg.cond[0])])),
            "worst_label_share": float(min(hit[labels == d].mean() for d in range(net.cfg.cond[0]))),
            "seconds": round(time.perf_counter() - t0, 1)}


def verdicts(report: dict, check: dict, train_limit_s: float) -> list[str]:
    rows = report["rows"]
    pca = {r["latent"]: r for r in rows if r["kind"] == "pca"}
    kinds = [r for r in rows if r["kind"] != "pca"]
    out = []
    worse = [f"{r['kind']}@{r['latent']}" for r in kinds if r["mse"] >= pca[r["latent"]]["mse"]]
    out.append(f"every kind below PCA's held-out MSE at its size: {'yes' if not worse else 'no: ' + ', '.join(worse)}")
    if "knn5" in pca[2]:
        worse = [r["kind"] for r in kinds if r["latent"] == 2 and r["knn5"] <= pca[2]["knn5"]]
        best = max((r for r in kinds if r["latent"] == 2), key=lambda r: r["knn5"])
        out.append(f"every kind above PCA's 5-NN at size 2 ({pca[2]['knn5']:.3f}): "
                   f"{'yes' if not worse else 'no: ' + ', '.join(worse)}; best {best['kind']} {best['knn5']:.3f}")
    sweep = report["beta_sweep"]
    falling = all(a["active_units"] >= b["active_units"] for a, b in zip(sweep, sweep[1:]))
    out.append(f"active units as beta grows: {[r['active_units'] for r in sweep]} ({'never rise' if falling else 'rise somewhere'}); "
               f"KL at beta {sweep[-1]['beta']:g}: {sweep[-1]['kl']:.2f} nats")
    for latent in sorted(pca):
        ae = next(r for r in kinds if r["kind"] == "ae" and r["latent"] == latent)
        cae = next(r for r in kinds if r["kind"] == "contractive_ae" and r["latent"] == latent)
        out.append(f"contractive / plain AE Jacobian at size {latent}: {cae['jacobian_fro2'] / ae['jacobian_fro2']:.3f} "
                   f"(target <= 0.5); held-out MSE {ae['mse']:.4f} -> {cae['mse']:.4f} "
                   f"({(cae['mse'] / ae['mse'] - 1) * 100:+.0f} %)")
    out.append(f"cvae samples classified as asked: {check['as_asked']:.1%} of {check['samples']} (target 95 %; classifier "
               f"{check['classifier_val_acc']:.3f} on held-out real images; worst label {check['worst_label']}: "
               f"{check['worst_label_share']:.0%})")
    slow = [f"{r['kind']}@{r['latent']} {r['seconds']:.0f} s" for r in kinds if (r["seconds"] or 0) > train_limit_s]
    out.append(f"every kind trained within {train_limit_s:.0f} s: {'yes' if not slow else 'no: ' + ', '.join(slow)}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="digits,mnist")
    ap.add_argument("--mnist", default=str(ROOT.parent / "shared" / "data" / "mnist"), help="folder of MNIST's IDX files")
    ap.add_argument("--steps", type=int, help="steps per model (default: flows/family.py DEFAULTS per set)")
    ap.add_argument("--out", type=Path, default=outputs_root() / "bench" / "family")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    text, everything = [], {}
    for name in args.sets.split(","):
        data = args.mnist if name == "mnist" else name
        t0 = time.perf_counter()
        report = compare_family(data, out_dir=str(args.out / name), steps=args.steps)
        ex = load_examples(data)
        cvae = next(r["model"] for r in report["rows"] if r["kind"] == "cvae" and r["latent"] == 2)
        check = cvae_check(str(outputs_root() / "train" / cvae), ex)
        limit = 60 if name == "digits" else 600
        s = ex.about
        text += [f"## {name}: {s['train']} training / {s['val']} held-out images (seeded split), {len(report['rows'])} "
                 f"rows in {time.perf_counter() - t0:.0f} s; load average {os.getloadavg()[0]:.1f}", "",
                 summary_table(report), "", *[f"- {v}" for v in verdicts(report, check, limit)], ""]
        everything[name] = {**report, "cvae_check": check}
    text.append(f"(CPU: {os.cpu_count()} cores; torch {torch.__version__}; `train s` is each model's own training, "
                "from its first, uncached run)")
    print("\n".join(text))
    (args.out / "family.md").write_text("\n".join(text) + "\n")
    (args.out / "family.json").write_text(json.dumps(everything, indent=1))


if __name__ == "__main__":
    main()
