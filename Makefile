.PHONY: setup demo test crds e2e

setup:
	@bash scripts/setup.sh

demo:
	@bash scripts/setup.sh --demo
	@.venv/bin/agentpool demo

test: setup
	@bash scripts/test.sh

crds: setup
	@.venv/bin/agentpool crd > crds/agentpool.dev_agentpools.yaml
	@cp crds/agentpool.dev_agentpools.yaml charts/agentpool-operator/crds/agentpool.dev_agentpools.yaml

e2e: setup
	@bash e2e/kind-up.sh
