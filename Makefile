# Two commands do everything on a fresh clone: `make demo` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test install bench-deps clean-outputs

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps mario-gpt==0.1.3   # data only: the SMB levels in mario_gpt/level.py (never imported)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/aeflow demo

test: $(STAMP)
	$(PY) -m pytest -q

# BM3D (non-commercial licence), OpenCV and TSB-AD's VUS-PR, for bench/ only. TSB-AD without its dependencies:
# it pins numpy<2 and pulls torch, transformers and more for its detectors; bench/anomaly.py imports only its
# evaluation code (numpy, scikit-learn, statsmodels of the bench extra). `pip check` then lists what it lacks.
bench-deps: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps TSB-AD==1.5

clean-outputs:
	rm -rf outputs/*/ outputs/.prefect
