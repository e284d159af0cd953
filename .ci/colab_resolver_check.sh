#!/usr/bin/env bash
# Run by hand (not by .ci/run: it downloads ~1.5 GB): does pip, installing the project the way the Colab notebooks
# do, leave a Colab runtime's JAX, Flax and TensorFlow alone? A Python 3.12 venv gets what a current Colab runtime
# has preinstalled (COLAB_PACKAGES; the TPU variant adds jax[tpu], i.e. libtpu); then the notebooks' install lines
# run as `pip install --dry-run --report` and the report is compared with what is installed. Fails on any
# downgrade or uninstall, on a changed jax/jaxlib/flax/libtpu/tensorflow, or on a second TensorFlow distribution.
#   bash .ci/colab_resolver_check.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
work="${1:-$(mktemp -d)}"
COLAB_PACKAGES=(jax==0.12.0.1 jaxlib==0.12.0.1 flax==0.12.12 optax orbax-checkpoint tensorflow==2.21.0 tensorboard
                tensorflow-datasets numpy pillow scikit-image matplotlib ipykernel absl-py tqdm safetensors ml-dtypes
                scipy requests)
python312="python3.12"
if command -v pyenv >/dev/null 2>&1 && pyenv versions --bare | grep -q '^3\.12\.'; then
  python312="env PYENV_VERSION=$(pyenv versions --bare | grep '^3\.12\.' | sort -V | tail -n 1) python"
fi

compare() {  # compare REPORT LABEL (run with the venv's python)
  python - "$@" <<'EOF'
import json, sys
from importlib.metadata import distributions
from packaging.utils import canonicalize_name as canon
from packaging.version import Version
report, label = sys.argv[1], sys.argv[2]
before = {canon(d.metadata["Name"]): d.version for d in distributions()}
kept = ("jax", "jaxlib", "flax", "libtpu", "tensorflow")
new, changed, down = [], [], []
for item in json.load(open(report))["install"]:
  name, version = canon(item["metadata"]["name"]), item["metadata"]["version"]
  if name == "sparse-restore":
    continue
  if name not in before:
    new.append(f"{name} {version}")
  elif Version(version) < Version(before[name]):
    down.append(f"{name} {before[name]} -> {version}")
  else:
    changed.append(f"{name} {before[name]} -> {version}")
second_tf = [n for n in new if n.split()[0].startswith(("tensorflow-cpu", "tensorflow-intel", "tf-nightly"))]
print(f"{label}\n  kept: " + ", ".join(f"{n} {before[n]}" for n in kept if n in before))
print(f"  downgraded: {down or 'none'}\n  upgraded: {changed or 'none'}\n  new: {', '.join(new) or 'none'}")
print(f"  second TensorFlow distribution: {second_tf or 'none'}")
sys.exit(1 if down or second_tf or any(c.split()[0] in kept for c in changed) else 0)
EOF
}

status=0
for runtime in gpu_or_cpu tpu; do
  venv="$work/colab_$runtime"
  rm -rf "$venv"
  $python312 -m venv "$venv"
  extra=()
  [ "$runtime" = tpu ] && extra=("jax[tpu]==0.12.0.1")
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q "${COLAB_PACKAGES[@]}" "${extra[@]}"
  for spec in "$repo[train]" "$repo"; do  # train_tpu.ipynb, restore_with_pretrained.ipynb
    "$venv/bin/pip" install -q --dry-run --report "$venv.report.json" "$spec"
    PATH="$venv/bin:$PATH" compare "$venv.report.json" "[$runtime runtime] pip install $spec" || status=1
  done
done
exit $status
