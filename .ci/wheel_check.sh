#!/usr/bin/env bash
# The wheel a user installs into an environment that already has torch, without the GPU extras:
#  1. build the wheel;
#  2. make a fresh virtual environment holding the project environment's packages (links, nothing downloaded)
#     minus the optional extras (DeepSpeed, DALI, timm, ONNX) and minus the checkout's own editable haf;
#  3. pip-install the wheel WITH dependency resolution but offline (--no-index): every core requirement must be met
#     by what is there, and torch must be left exactly as it was;
#  4. from a folder outside the checkout: import every haf module, `haf --version`, `haf hierarchies`,
#     `haf config --list`, a frame from a shipped hierarchy by name, one short `haf train --config demo`, and the
#     one-line error naming the extra when a run asks for DeepSpeed.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PY:-$REPO/.venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/dist" . >/dev/null
WHEEL=$(ls "$WORK"/dist/haf-*.whl)
rm -rf "$REPO/build"  # setuptools' scratch folder of the build above

# The fresh environment: each package of the project environment linked in, except the extras and haf itself.
PROJECT_SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
"$PY" -m venv --without-pip "$WORK/venv"
V="$WORK/venv/bin/python"
SITE=$("$V" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
for entry in "$PROJECT_SITE"/*; do
  name=$(basename "$entry")
  case "$name" in
    deepspeed|deepspeed-*|nvidia_dali*|timm|timm-*|onnx|onnx-*|onnxruntime|onnxruntime-*) continue ;;  # the extras
    haf|haf-*|__editable__*haf*|_haf*|__pycache__|nvidia) continue ;;  # the checkout's haf; nvidia/ below
  esac
  ln -s "$entry" "$SITE/$name"
done
if [ -d "$PROJECT_SITE/nvidia" ]; then  # torch's CUDA libraries share the nvidia/ namespace with DALI: all but DALI
  mkdir "$SITE/nvidia"
  for entry in "$PROJECT_SITE"/nvidia/*; do
    case "$(basename "$entry")" in dali|dali-*) ;; *) ln -s "$entry" "$SITE/nvidia/" ;; esac
  done
fi

cd "$WORK"  # outside the checkout from here on: only the installed wheel can be imported
"$V" - <<'PYEOF'
import importlib.util
for extra in ("deepspeed", "nvidia.dali", "timm", "onnx", "onnxruntime", "haf"):
    assert importlib.util.find_spec(extra) is None, f"{extra} is importable before the wheel is installed"
PYEOF
TORCH_BEFORE=$("$V" -c "import torch; print(torch.__version__, torch.__file__)")

# Offline resolution against what is installed: a core requirement that is missing or too old fails here instead of
# being downloaded, and nothing already installed can be replaced (there is nothing to replace it with).
"$PY" -m pip --python "$V" install -q --no-index "$WHEEL" \
  || { echo "wheel: pip could not install $WHEEL into an environment with torch ($TORCH_BEFORE)" >&2; exit 1; }
TORCH_AFTER=$("$V" -c "import torch; print(torch.__version__, torch.__file__)")
[ "$TORCH_BEFORE" = "$TORCH_AFTER" ] || { echo "wheel: torch changed: $TORCH_BEFORE -> $TORCH_AFTER" >&2; exit 1; }
echo "wheel: installed with its requirements resolved offline; torch unchanged ($TORCH_AFTER)"

"$V" - <<'PYEOF'
import importlib, importlib.resources, importlib.util, pkgutil, sys
import haf
assert haf.__file__.startswith(sys.prefix), f"haf imported from {haf.__file__}, not the wheel in {sys.prefix}"
assert importlib.util.find_spec("deepspeed") is None and importlib.util.find_spec("nvidia.dali") is None
names = [m.name for m in pkgutil.walk_packages(haf.__path__, "haf.")]
for name in names:
    importlib.import_module(name)
for name in haf.__all__:
    if name != "load_classifier" or importlib.util.find_spec("haf.inference") is not None:
        getattr(haf, name)
typed = importlib.resources.files("haf") / "py.typed"
assert typed.is_file(), "py.typed is not in the wheel"
print(f"wheel: imported {len(names)} haf modules and the public API from {haf.__path__[0]}")
PYEOF
HAF="$WORK/venv/bin/haf"
test -x "$HAF"
VERSION=$("$V" -c "import haf; print(haf.__version__)")
[ "$("$HAF" --version)" = "haf $VERSION" ] && [[ "$WHEEL" == *"haf-$VERSION-"* ]]
"$HAF" hierarchies > hierarchies.txt
for name in cifar100_l5 fgvc_aircraft inaturalist19 tiered_imagenet; do grep -q "^$name " hierarchies.txt; done
$HAF frame fgvc_aircraft --gamma 1 --json > frame.json  # a shipped hierarchy by name
# FGVC-Aircraft at gamma 1: K = 100 leaves, the reference's s_min -0.6100 (docs/METHOD.md section 2).
"$V" -c "import json; r = json.load(open('frame.json')); assert r['K'] == 100 and abs(r['s_min'] + 0.6100) < 5e-5 and r['max_gram_error'] < 1e-9, r"
$HAF config --list > configs.txt && grep -qx "cifar100/haframe" configs.txt
$HAF train --config demo --output-dir run --set train.epochs=1 --set train.max_steps_per_epoch=2 \
  --set train.max_eval_steps=1 --set logging.progress=false --set logging.tensorboard=false \
  --set deepspeed.enabled=false --set train.device=cpu >train.log 2>&1 || { cat train.log; exit 1; }
test -s run/best.pt
"$V" -c "import json; m = json.load(open('run/metrics.json')); assert m['run']['split'] == 'test' and 0 <= m['top1'] <= 100, m"
# Asking for DeepSpeed without the extra: exit 2 and one line naming it, no traceback.
set +e
$HAF train --config demo --output-dir run-ds --set train.epochs=1 --set train.max_steps_per_epoch=1 \
  --set logging.progress=false --set logging.tensorboard=false --set deepspeed.enabled=true \
  --set train.device=cpu >ds.out 2>ds.err
code=$?
set -e
if [ "$code" != 2 ] || ! grep -q "pip install 'haf\[deepspeed\]'" ds.err || grep -q Traceback ds.err; then
  echo "wheel: a DeepSpeed run without the extra should fail in one line naming haf[deepspeed] (exit $code):" >&2
  cat ds.err >&2
  exit 1
fi
echo "wheel: haf --version, hierarchies, frame, config and a one-epoch haf train --config demo ran from $WORK"
