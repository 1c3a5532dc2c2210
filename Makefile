# The two commands of the README. Each does its own set-up (scripts/setup_env.sh, idempotent).
.PHONY: run test setup

setup:
	bash scripts/setup_env.sh

run: setup
	bash scripts/main.sh

test: setup
	bash scripts/test.sh
