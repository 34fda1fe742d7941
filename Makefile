# One-command setup: `make demo` and `make test` build .venv from the pinned
# requirements when it is missing or out of date, then run.

PYTHON   ?= python3.11
VENV     := .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.wmpc-installed
REQS     := requirements/ros.txt requirements/runtime.txt requirements/train.txt requirements/dev.txt
# The ROS wheels make the venv an ament prefix; MuJoCo renders offscreen on the CPU.
RUN_ENV  := AMENT_PREFIX_PATH=$(abspath $(VENV)) MUJOCO_GL=egl PYOPENGL_PLATFORM=egl

.PHONY: all venv test demo lint format bench doctor clean-venv

all: test

venv: $(STAMP)

$(STAMP): $(REQS) requirements/constraints.txt setup.py package.xml
	@echo "== creating $(VENV) from pinned requirements (first run takes a minute or two)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==25.3
	$(BIN)/python -m pip install --quiet --progress-bar off \
	    -c requirements/constraints.txt $(foreach r,$(REQS),-r $(r))
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@# An editable install skips data_files: register wmpc in the venv's ament index and
	@# link its share files, as `colcon build --symlink-install` does on a robot.
	mkdir -p $(VENV)/share/ament_index/resource_index/packages $(VENV)/share/wmpc
	touch $(VENV)/share/ament_index/resource_index/packages/wmpc
	for d in launch config urdf models package.xml; do ln -sfn $(abspath .)/$$d $(VENV)/share/wmpc/$$d; done
	@touch $(STAMP)
	@echo "== $(VENV) ready"

test: $(STAMP)
	$(RUN_ENV) $(BIN)/python -m pytest

demo: $(STAMP)
	$(RUN_ENV) $(BIN)/wmpc demo

bench: $(STAMP)
	$(RUN_ENV) $(BIN)/wmpc bench

doctor: $(STAMP)
	$(RUN_ENV) $(BIN)/wmpc doctor

lint: $(STAMP)
	$(BIN)/ruff check src tests launch
	$(BIN)/ruff format --check src tests launch

format: $(STAMP)
	$(BIN)/ruff format src tests launch
	$(BIN)/ruff check --fix src tests launch

clean-venv:
	rm -rf $(VENV)
