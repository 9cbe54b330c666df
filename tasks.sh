#!/usr/bin/env bash
# The project's two commands (see README):
#   bash tasks.sh main   set up, get and verify the data, plan, train and execute every notebook (full profile)
#   bash tasks.sh test   set up, then ruff, the unit tests and nbval over every notebook (smoke profile)
# Both create .venv with requirements.txt on first use. Data location and split come from EMNIST_DATA
# (default data/) and EMNIST_SPLIT (default: the split present there, else balanced, downloaded when missing);
# the profile from EMNIST_PROFILE (main: full; test: smoke) and the runs at once from EMNIST_JOBS (default auto).
set -euo pipefail
cd "$(dirname "$0")"

setup() {
  local py=${PYTHON:-}
  if [ -z "$py" ]; then py=$(command -v python3.11 || command -v python3); fi
  [ -x .venv/bin/python ] || "$py" -m venv .venv
  local stamp=.venv/.requirements.sha256
  local want; want=$(sha256sum requirements.txt | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -r requirements.txt
    echo "$want" > "$stamp"
  fi
  # Make `import emnist_utils` work from notebooks/ and anywhere else, without a build step.
  .venv/bin/python -c "import sysconfig, pathlib; pathlib.Path(sysconfig.get_paths()['purelib'], 'emnist_cnn.pth').write_text('$PWD\n')"
}

case "${1:-}" in
  main)
    setup
    export EMNIST_RESUME_COMMAND="${EMNIST_PROFILE:+EMNIST_PROFILE=$EMNIST_PROFILE }bash tasks.sh main"
    exec .venv/bin/python -m emnist_utils notebooks --profile "${EMNIST_PROFILE:-full}" --jobs "${EMNIST_JOBS:-auto}"
    ;;
  test)
    setup
    export EMNIST_PROFILE=${EMNIST_PROFILE:-smoke}
    .venv/bin/ruff format --check .
    .venv/bin/ruff check .
    set +e
    .venv/bin/python -m pytest -p no:cacheprovider --nbval-lax tests notebooks -ra
    rc=$?
    set -e
    if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: treating that as a failure" >&2; exit 1; fi
    exit "$rc"
    ;;
  *)
    echo "usage: bash tasks.sh main|test" >&2
    exit 2
    ;;
esac
