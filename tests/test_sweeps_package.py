"""Sweeps as a package (issue 24 item 3): one module per concern, grid search and successive halving
both call the one point runner, no import cycle (the old `mmln.sweep <-> mmln.halving` one is gone),
the old import paths still work, and the rung rule is a public pure function of per-point proxies."""
from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path

from tests.test_halving import synchronous

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mmln" / "sweeps"


def imports_of(path: Path) -> dict[str, set[str]]:
    """{imported mmln module: names} of a module, at any depth (function-level imports too)."""
    out: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mmln"):
            out.setdefault(node.module, set()).update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            out.update({a.name: set() for a in node.names if a.name.startswith("mmln")})
    return out


def test_the_sweeps_package_has_no_cycle_and_never_imports_the_old_paths():
    graph = {f"mmln.sweeps.{p.stem}": {m for m in imports_of(p) if m.startswith("mmln.sweep") or m == "mmln.halving"}
             for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert {"mmln.sweeps.plan", "mmln.sweeps.point", "mmln.sweeps.grid", "mmln.sweeps.halving",
            "mmln.sweeps.summary", "mmln.sweeps.slurm", "mmln.sweeps.cli"} <= set(graph)
    for module, deps in graph.items():
        assert not deps & {"mmln.sweep", "mmln.halving"}, (module, deps)  # the shims are for callers only
    seen, stack = set(), []

    def visit(m):  # depth-first: a module met again while on the stack closes a cycle
        assert m not in stack, f"import cycle: {' -> '.join(stack[stack.index(m):] + [m])}"
        if m in seen:
            return
        stack.append(m)
        for d in graph.get(m, ()):
            visit(d)
        stack.pop()
        seen.add(m)

    for m in graph:
        visit(m)
    for shim in ("sweep.py", "halving.py"):  # the old paths import the package, never the reverse
        assert all(m.startswith("mmln.sweeps.") for m in imports_of(ROOT / "mmln" / shim)), shim


def test_grid_and_halving_call_the_one_point_runner():
    for module in ("grid", "halving"):
        assert "run_point" in imports_of(PACKAGE / f"{module}.py").get("mmln.sweeps.point", set()), module
    defined = [p.name for p in ROOT.joinpath("mmln").rglob("*.py")
               if any(isinstance(n, ast.FunctionDef) and n.name == "run_point" for n in ast.walk(ast.parse(p.read_text())))]
    assert defined == ["point.py"]


def test_the_rung_rule_is_a_pure_function_of_per_point_proxies():
    from mmln.sweeps.rungs import survivors

    r0 = {1e-2: 0.1, 1e-3: 0.5, 1e-4: 0.9, 1e-5: 0.5, 1e-6: 0.7, 1e-7: 0.2, 1e-8: 0.3}
    assert set(survivors(r0, 3)) == synchronous(r0, 3) == {1e-4, 1e-6, 1e-3}  # the tie: the higher lr
    assert survivors(r0, 3) == [1e-4, 1e-6, 1e-3]  # best first
    assert set(survivors(r0, 3, maximize=False)) == synchronous({lr: -v for lr, v in r0.items()}, 3)
    assert survivors({1e-3: math.nan, 1e-4: 0.1, 1e-5: math.nan}, 2) == [1e-4, 1e-3]  # NaN last, tie: higher lr
    assert survivors({}, 3) == [] and survivors({1e-3: 1.0}, 3) == [1e-3]


def test_the_documented_command_and_old_import_paths_still_work():
    from mmln import halving, sweep
    from mmln.sweeps import cli, rungs, study

    assert sweep.main is cli.main and halving.sync_promoted is rungs.sync_promoted
    assert halving.Options is study.Options and halving.decide_rung is study.decide_rung
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    helped = subprocess.run([sys.executable, "-m", "mmln.sweep", "--help"], cwd=ROOT, env=env, capture_output=True,
                            text=True)
    assert helped.returncode == 0 and "usage: python -m mmln.sweep" in helped.stdout
    for flag in ("--search", "--eta", "--halving-rule", "--first-rung", "--proxy-metric", "--study-storage",
                 "--launcher", "--only-index", "--summarize", "--sweep-id", "--point-overrides", "--seeds",
                 "--workers", "--worker", "--heartbeat", "--heartbeat-timeout"):
        assert flag in helped.stdout, flag
