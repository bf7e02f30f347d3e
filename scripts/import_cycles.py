"""Print every import cycle among tuner's and workloads' modules; exit 1 if there is one.

Run by ``make test`` (and tests/test_layers.py). Imports inside functions count (grimp reads
every import statement); ``if TYPE_CHECKING:`` imports do not, since they never run.

    python scripts/import_cycles.py
"""

from __future__ import annotations

import sys

import grimp


def cycles(packages: tuple[str, ...] = ("tuner", "workloads")) -> list[list[str]]:
    """One shortest cycle per import edge that closes one (each cycle once)."""
    graph = grimp.build_graph(*packages, exclude_type_checking_imports=True)
    seen: set[frozenset[str]] = set()
    out = []
    for a in sorted(graph.modules):
        for b in sorted(graph.find_modules_directly_imported_by(a)):
            chain = graph.find_shortest_chain(importer=b, imported=a)
            if chain and frozenset(chain) not in seen:
                seen.add(frozenset(chain))
                out.append([a, *chain])
    return out


def main() -> int:
    found = cycles()
    for c in found:
        print("import cycle: " + " -> ".join(c))
    print(f"{len(found)} import cycles")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
