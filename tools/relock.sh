#!/usr/bin/env bash
# Regenerate constraints.txt, the exact version of every package the two README commands install.
# Run after changing a pin in requirements.txt or requirements-dev.txt; commit the result.
set -euo pipefail
cd "$(dirname "$0")/.."
pip install -q pip-tools==7.6.2
: > constraints.txt   # the requirements files read it; start empty so the old pins don't steer the resolve
pip-compile -q --no-emit-index-url --no-emit-find-links --strip-extras --allow-unsafe \
  -o constraints.txt requirements-dev.txt
sed -i "s|^#    pip-compile .*|#    tools/relock.sh|" constraints.txt
# The local CPU wheel is 2.13.0+cpu; a bare 2.13.0 pin accepts it and never a CUDA build.
# pip itself is left to the user's installer.
sed -i -e 's/^torch==\([0-9.]*\)+cpu$/torch==\1/' constraints.txt
awk '/^pip==/ {skip=1; next} skip && /^ / {next} {skip=0; print}' constraints.txt > constraints.tmp
mv constraints.tmp constraints.txt
echo "constraints.txt: $(grep -c '^[a-z0-9]' constraints.txt) packages pinned"
