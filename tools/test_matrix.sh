#!/usr/bin/env bash
# Run the suite on every Python 3.10-3.13 found, each in its own .venv-3.X.
# Usage: tools/test_matrix.sh [VERSION ...]   (default: 3.10 3.11 3.12 3.13)
set -uo pipefail
cd "$(dirname "$0")/.."

find_python() {
  # A python3.X on PATH that really runs, else one under pyenv.
  local version=$1 candidate
  for candidate in "$(command -v "python$version")" \
                   "$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/"python$version" 2>/dev/null | sort -V | tail -n 1)"; do
    if [ -n "$candidate" ] && "$candidate" -c 'import sys' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

failed=()
ran=()
for version in "${@:-3.10 3.11 3.12 3.13}"; do
  for v in $version; do
    if ! python=$(find_python "$v"); then
      echo "NOTICE: Python $v not found: not tested."
      continue
    fi
    echo "=== Python $v ($python) ==="
    # The whole suite but the first rungs' known gaps: make test checks those strict
    # failures on the default Python; here they would only wait out their timeouts.
    if make setup-dev PYTHON="$python" VENV=".venv-$v" &&
       ".venv-$v/bin/pytest" -m "not soak" --without-known-gaps; then
      ran+=("$v")
    else
      failed+=("$v")
    fi
  done
done

echo "Passed on: ${ran[*]:-none}. Failed on: ${failed[*]:-none}."
[ ${#failed[@]} -eq 0 ] && [ ${#ran[@]} -gt 0 ]
