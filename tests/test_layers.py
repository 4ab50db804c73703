"""The import rules of the layout (docs: ARCHITECTURE "Layout"), read from the source with ``ast``.

* nothing outside ``spark_jobs/`` imports pyspark; nothing outside ``trainer/`` imports megatron;
* ``etl/core`` (the shared core) imports nothing from the other etl subpackages, augment,
  shards, trainer or spark_jobs; ``etl`` imports nothing from augment, shards, trainer, spark_jobs;
* no job file (``spark_jobs/<stage>.py``) imports another job file;
* no package module imports a private name (``_x``) from another top-level package;
* no package module touches ``sys.path``.

Also: ruff is clean with the project's configuration (pyproject.toml ``[tool.ruff]``).
"""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("etl", "augment", "shards", "trainer", "spark_jobs")
#: spark-submit entry points: each runs one stage (or the report) over the executors.
JOB_FILES = {"spark_jobs.clean", "spark_jobs.dedup", "spark_jobs.tfidf_filter", "spark_jobs.augment_corpus", "spark_jobs.build_shards",
             "spark_jobs.report"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources(*roots: str) -> dict[str, tuple[Path, ast.Module]]:
    out = {}
    for root in roots:
        for path in sorted((ROOT / root).rglob("*.py")):
            out[_module_name(path)] = (path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return out


def _imports(module: str, tree: ast.Module) -> list[tuple[str, list[str], int]]:
    """(imported module, names imported from it, line) for every import, lazy ones included."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{module}:{node.lineno}: relative import (the project uses absolute imports)"
            found.append((node.module or "", [a.name for a in node.names], node.lineno))
    return found


CODE = _sources(*PACKAGES, "benchmarks", "scripts")
PACKAGE_CODE = {m: v for m, v in CODE.items() if m.split(".")[0] in PACKAGES}


def _violations(modules, rule) -> list[str]:
    bad = []
    for module, (path, tree) in sorted(modules.items()):
        for target, names, line in _imports(module, tree):
            reason = rule(module, target, names)
            if reason:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {reason}")
    return bad


def _top(name: str) -> str:
    return name.split(".")[0]


def test_pyspark_only_in_spark_jobs():
    assert not _violations(CODE, lambda m, t, n: f"imports {t}" if _top(t) == "pyspark" and _top(m) != "spark_jobs" else None)


def test_megatron_only_in_trainer():
    assert not _violations(CODE, lambda m, t, n: f"imports {t}" if _top(t) == "megatron" and _top(m) != "trainer" else None)


def test_core_imports_only_the_core():
    def rule(module, target, names):
        if not module.startswith("etl.core"):
            return None
        if _top(target) in ("augment", "shards", "trainer", "spark_jobs"):
            return f"the core imports {target}"
        if target == "etl":
            return f"the core imports etl.{names}"
        if target.startswith("etl.") and not target.startswith("etl.core"):
            return f"the core imports {target}"
        return None

    assert not _violations(PACKAGE_CODE, rule)


def test_etl_does_not_import_later_stages():
    rule = (lambda m, t, n: f"etl imports {t}" if _top(m) == "etl" and _top(t) in ("augment", "shards", "trainer", "spark_jobs") else None)
    assert not _violations(PACKAGE_CODE, rule)


def test_no_job_file_imports_another():
    def rule(module, target, names):
        targets = {target} | {f"{target}.{n}" for n in names}
        hit = sorted((targets & JOB_FILES) - {module})
        return f"job file imports {hit}" if module in JOB_FILES and hit else None

    assert not _violations(PACKAGE_CODE, rule)


def test_no_private_names_across_packages():
    def rule(module, target, names):
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        return f"imports private {private} from {target}" if private and _top(target) != _top(module) else None

    assert not _violations(PACKAGE_CODE, rule)
    # and none across the etl subpackages (etl.core, etl.io, etl.clean, ...): private means module-private
    rule_sub = (lambda m, t, n: f"imports private {[x for x in n if x.startswith('_')]} from {t}"
                if _top(m) == _top(t) and any(x.startswith("_") and not x.startswith("__") for x in n) and t != m else None)
    assert not _violations({m: v for m, v in PACKAGE_CODE.items() if _top(m) == "etl"}, rule_sub)


def test_no_sys_path_edits():
    bad = []
    for _module, (path, tree) in sorted(PACKAGE_CODE.items()):
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name) and node.value.id == "sys":
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bad, f"sys.path used in package code: {bad}"


def test_rules_catch_a_violation(tmp_path):
    """The checks above see lazy imports inside functions and private names."""
    tree = ast.parse("def f():\n    from pyspark.sql import functions\n    from shards.x import _y\n")
    found = _imports("etl.core.thing", tree)
    assert ("pyspark.sql", ["functions"], 2) in found and ("shards.x", ["_y"], 3) in found


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    assert Path(ruff).exists(), "ruff is not installed: it is in the dev extra (bash scripts/setup.sh installs it)"
    proc = subprocess.run([ruff, "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
