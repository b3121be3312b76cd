# Two commands: `make demo` and `make test`. Each installs what it needs on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ENGINE := forms/engine

.PHONY: demo test install java node-engine clean

# The demo keeps Prefect's run history in ./.prefect (unless PREFECT_HOME is set): a newer
# Prefect elsewhere on the machine may have migrated ~/.prefect's database past ours.
demo: $(STAMP)
	PREFECT_HOME="$${PREFECT_HOME:-$(CURDIR)/.prefect}" $(BIN)/terrain demo

test: $(STAMP) java node-engine
	$(BIN)/python -m pytest

install: $(STAMP)

# The virtual environment is rebuilt only when pyproject.toml changes.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Terrain needs Python 3.11 or newer"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# ODK Validate (JavaRosa, the engine inside ODK Collect) runs on Java.
java:
	@command -v java >/dev/null 2>&1 || { \
	  echo "Installing a headless Java runtime for ODK Validate..."; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless >/dev/null; }

# ODK Web Forms' engine (@getodk/xforms-engine) runs under Node.
node-engine:
	@command -v npm >/dev/null 2>&1 || { \
	  echo "Installing Node.js and npm for the ODK Web Forms engine..."; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }
	@if [ -f $(ENGINE)/package.json ] && [ ! -f $(ENGINE)/node_modules/.installed ]; then \
	  cd $(ENGINE) && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; fi

clean:
	rm -rf $(VENV) forms/build terrain.duckdb $(ENGINE)/node_modules
