# Shortcuts for the commands the README and docs/ give. `make bench` runs every benchmark in turn
# (about 45 minutes on 2 CPUs; results in bench/results/); never part of the test suite.
PY ?= .venv/bin/python

.PHONY: check docs bench bench-quick

check:
	bash scripts/check

# The generated parts of the docs: the settings table (docs/configuration.md) and the
# README's demo output (a real run of about 10 s).
docs:
	$(PY) scripts/settings_table.py
	$(PY) scripts/demo_output.py

bench:
	$(PY) bench/apply.py
	-$(PY) bench/api.py
	$(PY) bench/throughput.py -n 4000 --concurrency 1,2,4 --paced --output bench/results/throughput-provisioning-$$(date +%F).json
	$(PY) bench/throughput.py -n 20000 --mix reports --records 500 --concurrency 1,2,4 --paced --paths submit_events,per_record --output bench/results/throughput-reports-$$(date +%F).json
	$(PY) bench/scaling.py
	$(PY) bench/memory.py --populate clone --worker-events 10000,50000,200000

bench-quick:
	$(PY) bench/apply.py --events 20000 --repeat 1
	$(PY) bench/throughput.py -n 2000 --concurrency 2 --paced --paced-seconds 5 --output /tmp/throughput-quick.json
