#!/usr/bin/env bash
# Fill .gpu/ for the open issues' GPU items, after the team's GPU kit has filled it with its
# wheels and Fashion-MNIST files: this list of commands (benchmarks/gpu/commands.txt), the King
# James text (the GPU machine has no Debian bible-kjv packages) and a charlm spec that reads it.
#   bash benchmarks/gpu/prepare.sh      (from the project root, with .venv installed)
set -euo pipefail
[ -d .gpu ] || { echo "no .gpu/: run the GPU kit's prepare.sh first" >&2; exit 2; }
cp benchmarks/gpu/commands.txt .gpu/commands.txt
.venv/bin/python - <<'PY'
from pathlib import Path
from workloads.charlm import read_kjv

Path(".gpu/kjv.txt").write_text(read_kjv(), encoding="utf-8")
spec = Path("studies/charlm_kjv.toml").read_text(encoding="utf-8")
spec = spec.replace("split_seed = 0 }", 'split_seed = 0, text_path = ".gpu/kjv.txt" }')
assert 'text_path = ".gpu/kjv.txt"' in spec, "studies/charlm_kjv.toml changed: update this script"
Path(".gpu/charlm_kjv.toml").write_text(spec, encoding="utf-8")
PY
du -sh .gpu
