# shellcheck shell=bash
# fresh_venv DIR: create a virtualenv at DIR, activate it, upgrade pip. Sourced by .ci/run and .ci/matrix.
fresh_venv() {
  python3 -m venv "$1"
  # shellcheck disable=SC1091
  . "$1/bin/activate"
  python -m pip install -q --no-cache-dir --upgrade pip
}
