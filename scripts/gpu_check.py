"""The GPU check (run through scripts/gpu_check.sh): everything mat-dist can only show on a CUDA device, in one
JSON, in under 8 minutes on one GPU.

Steps, each a subprocess with its own time limit inside one overall deadline:
  install      the carried wheels (scripts/gpu_wheels.sh) that the machine lacks or holds in another version,
               and mat-dist itself, into a temporary folder put on PYTHONPATH (nothing is installed into the
               machine's Python)
  gpu_tests    pytest -m gpu on the test files that hold gpu-marked tests
  bench_cnn    matd bench on CUDA: MAT, AT (l_inf, l_2, l_1) and MSD with the MSD CNN, and the l_1 projection
  bench_resnet the same methods with PreAct ResNet-18 on CIFAR-shaped inputs (3 x 32 x 32)
  train        the main job's recipe (mnist5k-paper-mat) for a few epochs on CUDA, in this process, no tracking
  evaluate     that model under the field suite on 100 test images, in this process, on CUDA

Without a CUDA device it prints one line and exits 2 before it writes or installs anything. Exit 0: every step
passed; 1: a step failed (the JSON says which, with the tail of its output). The temporary folder is removed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEADLINE_S = 440  # the whole check, install to evaluation: under 8 minutes with room for start-up
# Each step's own limit (seconds); a step also stops at the overall deadline.
LIMITS = {"install": 60, "gpu_tests": 90, "bench_cnn": 60, "bench_resnet": 90, "train": 90, "evaluate": 120}
TRAIN_EPOCHS = 3          # the recipe's radii ramp over the first half of training, so epochs 2-3 are at full radii
EVAL_EXAMPLES = 100
BENCH_METHODS = "mat,at,msd"
# --cpu-smoke: the same steps on the CPU at toy sizes, to test the check itself where there is no GPU.
SMOKE = {
    "bench": ["--repeats", "1", "--steps", "2", "--batch-size", "8"],
    "train": ["data.limit_train=128", "data.val_size=100", "eval.examples=20", "eval.steps=2"],
    "evaluate": [f"attacks.apgd_{n}.params.{k}={v}" for n in ("linf", "l2", "l1")
                 for k, v in (("n_iter", 2), ("n_target_classes", 1))]
                + [f"attacks.pgd_{n}.params.steps=2" for n in ("linf", "l2", "l1")]
                + ["transfer.examples=10", "curves.examples=10", "curves.steps=[1,2]"],
}
SOURCES = ("pyproject.toml", "mat_dist", "cli", "clusters", "tune_spaces")  # what pip needs to build mat-dist


def fail(message: str, code: int = 2) -> None:
    print(f"gpu_check: {message}", file=sys.stderr)
    sys.exit(code)


def cuda_or_exit() -> dict:
    try:
        import torch
    except ImportError:
        fail(f"no torch in {sys.executable}; set PYTHON to the interpreter that has a CUDA build of torch")
    if not torch.cuda.is_available():
        fail(f"no CUDA device visible to torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'}); "
             f"run this on a GPU machine")
    props = torch.cuda.get_device_properties(0)
    return {
        "python": platform.python_version(), "executable": sys.executable, "torch": torch.__version__,
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "gpu": torch.cuda.get_device_name(0),
        "gpu_count": torch.cuda.device_count(), "capability": f"{props.major}.{props.minor}",
        "gpu_memory_gib": round(props.total_memory / 2**30, 1), "bf16": torch.cuda.is_bf16_supported(),
        "cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
    }


def cpu_machine() -> dict:
    import torch

    return {"python": platform.python_version(), "executable": sys.executable, "torch": torch.__version__,
            "cpus": len(os.sched_getaffinity(0)), "platform": platform.platform()}


class Check:
    def __init__(self, out: Path, wheels: Path, work: Path, smoke: bool = False) -> None:
        self.out, self.wheels, self.work, self.smoke = out, wheels, work, smoke
        self.device = "cpu" if smoke else "cuda"
        self.epochs = 1 if smoke else TRAIN_EPOCHS
        self.examples = 10 if smoke else EVAL_EXAMPLES
        self.site = work / "site"
        self.start = time.monotonic()
        self.result: dict = {"ok": False, "steps": {}, "deadline_s": DEADLINE_S}
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(self.site),
                                                                               os.environ.get("PYTHONPATH")])),
                    "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg",
                    "PIP_NO_CACHE_DIR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        self.env.pop("MLFLOW_TRACKING_URI", None)
        # Caches that torch, Triton and matplotlib would leave in $TMPDIR or the home folder go into the work
        # folder, which is removed at the end: the check leaves nothing behind.
        cache = work / "cache"
        self.env.update({"TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"), "TRITON_CACHE_DIR": str(cache / "triton"),
                         "MPLCONFIGDIR": str(cache / "matplotlib"), "XDG_CACHE_HOME": str(cache)})

    def left(self) -> float:
        return DEADLINE_S - (time.monotonic() - self.start)

    def run(self, step: str, argv: list[str], *, cwd: Path) -> tuple[bool, str, float]:
        """Run one command with the step's limit; its process group is killed at the limit."""
        limit = min(LIMITS[step], self.left())
        if limit <= 5:
            return False, f"not started: the check's {DEADLINE_S} s deadline was reached", 0.0
        started = time.monotonic()
        proc = subprocess.Popen(argv, cwd=cwd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=limit)
            ok = proc.returncode == 0
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            output += f"\n[killed after {limit:.0f} s, the step's limit]"
            ok = False
        return ok, output, time.monotonic() - started

    def record(self, step: str, ok: bool, seconds: float, output: str, **figures) -> bool:
        row = {"ok": ok, "seconds": round(seconds, 2), **figures}
        if not ok:
            row["tail"] = output[-3000:]
        self.result["steps"][step] = row
        print(f"{step:13s} {'ok' if ok else 'FAILED'} {seconds:6.1f} s", flush=True)
        return ok

    def matd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "mat_dist.cli.main", *args]

    # --- steps -------------------------------------------------------------------------------------------------

    def install(self) -> bool:
        from importlib import metadata

        carried, installed, present = sorted(self.wheels.glob("*.whl")), [], {}
        for wheel in carried:
            name, version = wheel.name.split("-")[:2]
            if name == "setuptools":
                continue  # only the build of mat-dist below uses it
            try:
                have = metadata.version(name)
            except metadata.PackageNotFoundError:
                have = None
            if have == version:  # the machine's own copy is the version the tests run with here
                present[name] = have
                continue
            installed.append(wheel)
        started = time.monotonic()
        ok, output = True, ""
        if installed:
            ok, output, _ = self.run("install", [sys.executable, "-m", "pip", "install", "-q", "--no-index",
                                                 "--no-deps", "--no-compile", "--target", str(self.site),
                                                 *map(str, installed)], cwd=self.work)
        if ok:  # mat-dist from a copy of its sources, so that the build leaves nothing in the repository
            src = self.work / "src"
            src.mkdir()
            for name in SOURCES:
                copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
                copy(REPO / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                                 if (REPO / name).is_dir() else {}))
            ok, more, _ = self.run("install", [sys.executable, "-m", "pip", "install", "-q", "--no-index",
                                               "--find-links", str(self.wheels), "--no-deps", "--no-compile",
                                               "--target", str(self.site), str(src)], cwd=self.work)
            output += more
        return self.record("install", ok, time.monotonic() - started, output,
                           installed=[w.name for w in installed] + ["mat-dist (this repository)"],
                           machine_has=present)

    def gpu_tests(self) -> bool:
        files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py")
                       if "pytest.mark.gpu" in p.read_text())
        junit = self.work / "gpu-tests.xml"
        ok, output, seconds = self.run("gpu_tests", [sys.executable, "-m", "pytest", "-m", "gpu", "-q",
                                                     "-p", "no:cacheprovider", f"--junitxml={junit}", *files],
                                       cwd=REPO)
        counts = {}
        if junit.exists():
            suite = ET.parse(junit).getroot()
            suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
            counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        # A skipped gpu test ran nothing on the GPU: the check counts it as a failure (but for --cpu-smoke,
        # where every one of them skips).
        ok = ok and counts.get("tests", 0) > 0 and (self.smoke or counts.get("skipped", 1) == 0)
        return self.record("gpu_tests", ok, seconds, output, files=files, **counts)

    def bench(self, step: str, *extra: str) -> bool:
        out = self.work / f"{step}.json"
        ok, output, seconds = self.run(step, self.matd("bench", "--device", self.device, "--methods", BENCH_METHODS,
                                                       "--output", str(out), *extra,
                                                       *(SMOKE["bench"] if self.smoke else [])), cwd=self.work)
        figures = {}
        if ok and out.exists():
            data = json.loads(out.read_text())
            figures = {"ratios": data.get("ratios", {}), "settings": data.get("settings", {}),
                       "ms_per_batch": {name: round(1000 * row["median_s"], 3)
                                        for name, row in data.get("methods", {}).items()},
                       "passes": {name: [row["forward_passes"], row["backward_passes"]]
                                  for name, row in data.get("methods", {}).items()}}
            if "projection" in data:
                figures["l1_projection_us"] = {name: round(1e6 * row["median_s"], 2)
                                               for name, row in data["projection"]["cases"].items()}
        return self.record(step, ok, seconds, output, **figures)

    def train(self) -> bool:
        ok, output, seconds = self.run("train", self.matd(
            "train", "--config", "mnist5k-paper-mat", "--output", "runs/main", "--cluster", "none",
            f"train.epochs={self.epochs}", f"train.device={self.device}", "tracking.enabled=false",
            *(SMOKE["train"] if self.smoke else [])), cwd=self.work)
        metrics_file = self.work / "runs" / "main" / "metrics.jsonl"
        epochs = [json.loads(line) for line in metrics_file.read_text().splitlines()] if metrics_file.exists() else []
        keep = ("epoch", "epoch_time_s", "radius_scale", "train/loss", "val/clean_acc", "val/robust_linf",
                "val/robust_l2", "val/robust_l1", "val/robust_all")
        ok = ok and len(epochs) == self.epochs and (self.work / "runs" / "main" / "model.safetensors").exists()
        return self.record("train", ok, seconds, output, config="mnist5k-paper-mat", epochs_asked=self.epochs,
                           epochs=[{k: e[k] for k in keep if k in e} for e in epochs])

    def evaluate(self) -> bool:
        ok, output, seconds = self.run("evaluate", self.matd(
            "evaluate", "--run", "runs/main", "--suite", "field", "-n", str(self.examples), "--workers", "0",
            "--no-tracking", "--output", "eval-field", f"resources.num_gpus={0 if self.smoke else 1}",
            *(SMOKE["evaluate"] if self.smoke else [])), cwd=self.work)
        summary_file = self.work / "eval-field" / "summary.json"
        figures = {}
        if summary_file.exists():
            s = json.loads(summary_file.read_text())
            figures = {k: s.get(k) for k in ("examples", "clean", "all_linf", "all_l2", "all_l1", "all_attacks")}
            figures["attacks"] = s.get("attacks")
        ok = ok and figures.get("examples") == self.examples
        return self.record("evaluate", ok, seconds, output, suite="field", **figures)

    def all(self) -> int:
        steps_ok = self.install()
        if steps_ok:
            for step in (self.gpu_tests, lambda: self.bench("bench_cnn", "--parts", "methods,projection"),
                         lambda: self.bench("bench_resnet", "--parts", "methods", "--backbone", "preact_resnet18",
                                            "--channels", "3", "--image-size", "32"),
                         self.train):
                steps_ok = step() and steps_ok
            if "train" in self.result["steps"] and self.result["steps"]["train"]["ok"]:
                steps_ok = self.evaluate() and steps_ok
            else:
                steps_ok = self.record("evaluate", False, 0.0, "not run: the train step failed")
        self.result["ok"] = steps_ok
        self.result["seconds"] = round(time.monotonic() - self.start, 1)
        return 0 if steps_ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="the JSON file to write")
    parser.add_argument("--wheels", type=Path, default=REPO / ".gpu-wheels",
                        help="folder of scripts/gpu_wheels.sh (default: .gpu-wheels)")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="the same steps on the CPU at toy sizes: a test of the check itself, not of a GPU")
    args = parser.parse_args()
    # First: without a GPU nothing is written, installed or left behind.
    machine = cpu_machine() if args.cpu_smoke else cuda_or_exit()
    if not args.wheels.is_dir() or not any(args.wheels.glob("*.whl")):
        fail(f"no wheels in {args.wheels}: run scripts/gpu_wheels.sh where a package registry is reachable, "
             f"and carry the folder along")
    work = Path(tempfile.mkdtemp(prefix="matd-gpu-check-"))
    check = Check(args.output, args.wheels.resolve(), work, smoke=args.cpu_smoke)
    check.result["mode"] = "cpu-smoke" if args.cpu_smoke else "cuda"
    check.result["machine"] = machine
    code = 1
    try:
        code = check.all()
    except Exception as err:  # noqa: BLE001 - a bug of the check itself: still one JSON, saying so
        check.result["error"] = f"{type(err).__name__}: {err}"
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(check.result, indent=2) + "\n")
        print(f"gpu_check: {'every step passed' if code == 0 else 'a step failed'} in "
              f"{check.result.get('seconds', '?')} s; wrote {args.output}")
    return code


if __name__ == "__main__":
    sys.exit(main())
