#!/usr/bin/env bash
# Download the wheels that scripts/gpu_check.sh installs on a GPU machine without network.
#
#   bash scripts/gpu_wheels.sh [DIR]        # default DIR: .gpu-wheels (git-ignored), about 6 MiB
#
# The GPU machine (see BENCHMARKS.md, "GPU check"): Python 3.12 with a CUDA build of torch 2.11, numpy, scipy,
# pandas, pyarrow, scikit-learn, matplotlib, PyYAML, typer, rich, safetensors, requests, setuptools and pip
# already there; no Ray, MLflow, foolbox, pyautoattack, mlxtend or pydantic, and no network. Whatever travels
# to it (this repository and DIR) must stay under 64 MiB, so:
# - every wheel is fetched without its dependencies (--no-deps) and pinned to the version the test suite runs
#   with here: what the machine lacks is listed one by one, not resolved;
# - binary wheels are for CPython 3.12 on x86-64 (pydantic-core; safetensors is abi3);
# - pyautoattack's wheel is 42 MiB, of which 42.7 MB is one example checkpoint (pyautoattack/examples/
#   model_test.pt, with a TensorFlow one) that mat-dist never reads: it is rewritten without that folder
#   (its RECORD too), 60 KiB;
# - Ray (its wheels are some 70 MiB) and MLflow do not travel: the check trains in this process
#   (--cluster none) without tracking. pyarrow's cp312 wheel (about 40 MiB) does not travel either; the
#   machine has its own.
# typer, safetensors and typing-extensions are carried although the machine has them: gpu_check.sh installs
# a carried wheel only where the machine's copy is missing or older, and these are the versions mat-dist is
# tested with here.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.gpu-wheels}
py=${PYTHON:-python3}
[ -x .venv/bin/python ] && py=${PYTHON:-.venv/bin/python}
budget_mib=24   # the repository is about 4 MiB; the rest of the 64 MiB stays free for run folders and models

wheels=(
  "pydantic==2.14.4" "pydantic-core==2.50.5" "annotated-types==0.8.0" "typing-inspection==0.4.5"
  "typing-extensions==4.16.0"
  "foolbox==3.3.4" "eagerpy==0.30.0" "gitpython==3.2.1" "gitdb==4.0.12" "smmap==5.0.3"
  "pyautoattack==0.2.0"
  "mlxtend==0.25.0"
  "typer==0.29.2" "safetensors==0.8.0"
  "setuptools==84.2.1"   # builds mat-dist's own wheel there (pip's build isolation, from DIR alone)
)

mkdir -p "$dir"
"$py" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$dir" "${wheels[@]}"

# pyautoattack without its examples folder (see above); idempotent.
"$py" - "$dir" <<'EOF'
import base64, hashlib, pathlib, sys, zipfile

for wheel in pathlib.Path(sys.argv[1]).glob("pyautoattack-*.whl"):
    with zipfile.ZipFile(wheel) as z:
        keep = [i for i in z.infolist() if "/examples/" not in i.filename]
        if len(keep) == len(z.infolist()):
            continue
        files = {i.filename: z.read(i) for i in keep}
    record = next(name for name in files if name.endswith(".dist-info/RECORD"))
    lines = []
    for name, data in files.items():
        if name == record:
            continue
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        lines.append(f"{name},sha256={digest},{len(data)}")
    files[record] = ("\n".join(lines + [f"{record},,"]) + "\n").encode()
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
        for name, data in files.items():
            out.writestr(name, data)
    tmp.replace(wheel)
    print(f"{wheel.name}: examples/ left out")
EOF

total=0
for f in "$dir"/*.whl; do
  size=$(stat -c %s "$f")
  total=$((total + size))
  printf '%9d  %s\n' "$size" "$(basename "$f")"
done
printf '%9d  total (%s wheels) in %s\n' "$total" "$(ls "$dir"/*.whl | wc -l)" "$dir"
if [ "$total" -gt $((budget_mib * 1024 * 1024)) ]; then
  echo "gpu_wheels: $dir holds $total bytes, over the $budget_mib MiB budget; remove stale wheels (rm -r $dir) and rerun" >&2
  exit 1
fi
