"""B_simple against B_crit: does the gradient noise scale predict the tuned critical batch size?

For each spec: ``tuner run`` (the spec's trials, or ``--trials``), ``tuner curve --format json``
(B_crit of the McCandlish fit with its interval, Zhang et al.'s B_20 %), then ``tuner
noise-scale -b B`` at the best trial's metaparameters of a few batch sizes (the run's B_simple:
the ratio of the means over 20 measured steps; the NQM's is exact). McCandlish et al. (2018)
found B_simple within an order of magnitude of B_crit, usually below it. Prints a markdown row
per (spec, B) and the whole-process seconds of each noise-scale run.

    .venv/bin/python benchmarks/noise_scale.py [--storage URL] [--trials N]
        [SPEC:B,B,... ...]   (default: the NQM SGD and momentum specs, digits and the
        Fashion-MNIST MLP at CPU size)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

DEFAULT = ["studies/nqm_sgd.toml:16,256,4096", "studies/nqm_momentum.toml:16,256,4096",
           "studies/digits_mlp.toml:16,64,256", "studies/controls/fmnist_mlp_small.toml:16,64,256"]


def tuner(*args: str) -> str:
    """``tuner ARGS`` in a subprocess; its stdout."""
    done = subprocess.run([sys.executable, "-c", "from tuner.cli import main; main()", *args],
                          capture_output=True, text=True)
    if done.returncode not in (0, 1, 3):
        sys.exit(f"tuner {' '.join(args)} failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("specs", nargs="*", default=DEFAULT, metavar="SPEC:B,B")
    ap.add_argument("--storage", help="an existing storage with the specs' studies (else a "
                    "new SQLite file: every spec is run first)")
    ap.add_argument("--trials", type=int, help="trials per batch size (default: the spec's)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.storage or f"sqlite:///{tmp}/noise.db"
        print("| spec | B_crit [95 %] | B_20% [95 %] | B | steps | B_simple | "
              "B_simple / B_crit | noise-scale s |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for item in args.specs:
            spec, _, bs = item.partition(":")
            if not args.storage:
                tuner("run", spec, "--storage", url, "-q", "--no-summary",
                      *(["--trials", str(args.trials)] if args.trials else []))
            c = json.loads(tuner("curve", spec, "--storage", url, "--format", "json"))
            cbs = c["cbs"]
            crit, over = cbs["b_crit"], cbs["b_overhead"]
            ci = cbs["b_crit_ci95"]
            crit_txt = f"{crit:.4g} [{ci[0]:.4g}, {ci[1]:.4g}]" if crit and ci else (
                f"{crit:.4g}" if crit else "no fit")
            oci = over["ci95"]
            over_txt = (f"{over['value']:.4g}" if over["value"] else over["how"]) + (
                f" [{oci[0]:.4g}, {oci[1]:.4g}]" if oci and oci[1] else "")
            for b in (int(x) for x in bs.split(",")):
                t0 = time.perf_counter()
                ns = json.loads(tuner("noise-scale", spec, "-b", str(b), "--storage", url,
                                      "--format", "json", "--no-store"))
                secs = time.perf_counter() - t0
                bsim = ns["b_simple"]
                ratio = f"{bsim / crit:.3g}" if bsim and crit else "-"
                print(f"| {c['spec']} | {crit_txt} | {over_txt} | {b} | {ns['steps']} | "
                      f"{bsim:.4g} | {ratio} | {secs:.1f} |" if bsim else
                      f"| {c['spec']} | {crit_txt} | {over_txt} | {b} | {ns['steps']} | "
                      f"undefined | - | {secs:.1f} |", flush=True)


if __name__ == "__main__":
    main()
