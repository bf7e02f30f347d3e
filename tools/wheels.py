"""Fill a folder with wheels for an offline install (``make wheels``; ``make install-offline``).

On a machine with a network: resolve this project and its ``dev`` extra at the versions of
``constraints.txt`` (``pip install --dry-run --report``, nothing installed), download every
resolved package as a wheel with ``pip download --no-deps``, and build this project's own wheel.
``--no-torch`` leaves out torch, torchvision, lightning and the packages that come with them
(triton, the CUDA libraries: GBs) for a machine that has them already; the install there is
then satisfied by its own torch and reinstalls nothing.

    .venv/bin/python tools/wheels.py [--dest wheels] [--no-torch] [-- PIP_DOWNLOAD_OPTIONS]

Options after ``--`` go to ``pip download`` (e.g. ``--python-version 3.12 --platform
manylinux2014_x86_64 --only-binary=:all:`` for a machine with another Python).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Left out by --no-torch: what the GPU machine has with its torch (names normalised).
TORCH_FAMILY = re.compile(r"^(torch|torchvision|torchaudio|triton|lightning|pytorch-lightning|"
                          r"lightning-utilities|lightning-fabric|torchmetrics|nvidia-.*|cuda-.*)$")


def normalise(name: str) -> str:
    """PEP 503 name normalisation."""
    return re.sub(r"[-_.]+", "-", name).lower()


def resolve(extra_args: list[str]) -> list[tuple[str, str]]:
    """(name, version) of every package an install of ``.[dev]`` with the constraints pulls in."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
                        "--quiet", "--report", str(report), "-c", str(ROOT / "constraints.txt"),
                        f"{ROOT}[dev]", *extra_args], check=True)
        items = json.loads(report.read_text())["install"]
    return [(i["metadata"]["name"], i["metadata"]["version"]) for i in items
            if not i.get("is_direct")]  # the project itself is built below


def main() -> None:
    argv = sys.argv[1:]
    passthrough = argv[argv.index("--") + 1:] if "--" in argv else []
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dest", default=str(ROOT / "wheels"))
    ap.add_argument("--no-torch", action="store_true",
                    help="leave out torch, torchvision, lightning and their CUDA libraries")
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)

    dest = Path(args.dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    packages = resolve(passthrough)
    left_out = [f"{n}=={v}" for n, v in packages if args.no_torch and TORCH_FAMILY.match(
        normalise(n))]
    wanted = [f"{n}=={v}" for n, v in packages if f"{n}=={v}" not in left_out]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                    "--only-binary=:all:", "-d", str(dest), *passthrough, *wanted], check=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dest),
                    str(ROOT)], check=True)
    (dest / "requirements.txt").write_text("\n".join(wanted) + "\n")
    size = sum(f.stat().st_size for f in dest.iterdir()) / 2**20
    print(f"{dest}: {len(list(dest.glob('*.whl')))} wheels, {size:,.0f} MiB"
          + (f"; left out (the target has them): {', '.join(left_out)}" if left_out else ""))


if __name__ == "__main__":
    main()
