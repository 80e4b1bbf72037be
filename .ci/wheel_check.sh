#!/usr/bin/env bash
# The wheel a user installs: build it, install it with --no-deps into a fresh virtual environment that reuses the
# project's installed dependencies, and from a folder outside the checkout import every haf module, build a frame
# from a shipped hierarchy file and train one short epoch of the shipped demo config.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PY:-$REPO/.venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/dist" . >/dev/null
WHEEL=$(ls "$WORK"/dist/haf-*.whl)

# A fresh environment; the dependencies come from the project's environment through a .pth file (its
# site-packages directories; the checkout itself is not among them), so nothing is downloaded.
"$PY" -m venv --without-pip "$WORK/venv"
V="$WORK/venv/bin/python"
SITE=$("$V" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
"$PY" - > "$SITE/_project_deps.pth" <<'PYEOF'
import sys
for path in sys.path:
    if path.endswith("site-packages"):  # packages only: the checkout itself is not on this list
        print(path)
PYEOF
"$PY" -m pip --python "$V" install -q --no-deps "$WHEEL" 2>/dev/null \
  || PYTHONPATH="$SITE" "$PY" -m pip install -q --no-deps --target "$SITE" "$WHEEL"

cd "$WORK"  # outside the checkout: only the installed wheel can be imported
"$V" - <<'PYEOF'
import importlib, pkgutil, sys
import haf
assert haf.__file__.startswith(sys.prefix), f"haf imported from {haf.__file__}, not the wheel in {sys.prefix}"
names = [m.name for m in pkgutil.walk_packages(haf.__path__, "haf.")]
for name in names:
    importlib.import_module(name)
print(f"wheel: imported {len(names)} haf modules from {haf.__path__[0]}")
PYEOF
HAF="$WORK/venv/bin/haf"
test -x "$HAF" || HAF="$V -m haf.cli"
HIER=$("$V" -c "from haf.training.run_config import shipped_dir; print(shipped_dir('hierarchies') / 'fgvc_aircraft.json')")
$HAF frame "$HIER" --gamma 1 --json > frame.json
# FGVC-Aircraft at gamma 1: K = 100 leaves, the reference's s_min -0.6100 (docs/METHOD.md section 2).
"$V" -c "import json; r = json.load(open('frame.json')); assert r['K'] == 100 and abs(r['s_min'] + 0.6100) < 5e-5 and r['max_gram_error'] < 1e-9, r"
$HAF config --list > configs.txt && grep -qx "cifar100/haframe" configs.txt
$HAF train --config demo --output-dir run --set train.epochs=1 --set train.max_steps_per_epoch=2 \
  --set train.max_eval_steps=1 --set logging.progress=false --set logging.tensorboard=false \
  --set deepspeed.enabled=false --set train.device=cpu 2>train.log || { cat train.log; exit 1; }
test -s run/best.pt
"$V" -c "import json; m = json.load(open('run/metrics.json')); assert m['run']['split'] == 'test' and 0 <= m['top1'] <= 100, m"
echo "wheel: haf frame, haf config and a one-epoch haf train --config demo ran from $WORK"
