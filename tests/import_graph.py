"""First-party import closure of a stage's entry points, for checking dvc.yaml's code deps.

Nothing here names a module of the repository: the closure starts from the entry points a
stage's ``cmd`` runs (``spark_jobs/x.py``, ``python -m pkg.mod``, and the ``python -m`` lines of
a ``bash scripts/x.sh`` it calls) and follows every ``import`` statement (module level or
inside a function: a lazy import is code the stage can run) into the first-party packages.
So the check keeps working when modules move: only dvc.yaml's paths need updating.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGES = ("etl", "augment", "shards", "trainer", "spark_jobs")


def is_code_dep(dep: str) -> bool:
    """Whether a dvc.yaml dep is code (a .py file, a shell script, or a path in a package) rather than data."""
    return dep.endswith((".py", ".sh")) or dep.split("/")[0] in PACKAGES


def module_file(root: Path, module: str) -> Path | None:
    """The file of first-party ``module`` (``a/b.py`` or ``a/b/__init__.py``), or None."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


#: ``"package.module:attribute"``: a reference resolved by import at run time
#: (``etl.core.stage.resolve_dotted``), as a ``Stage`` names its Spark whole-corpus function.
DOTTED_REFERENCE = re.compile(r"([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):[A-Za-z_]\w*")


def _imported(root: Path, path: Path) -> set[str]:
    """Module names ``path`` imports (``from a import b`` yields ``a`` and ``a.b``), and the
    modules of dotted references passed as keyword arguments (``Stage(spark_corpus="a.b:f")``
    runs ``a.b`` when the stage runs). A table of such references (``etl.core.config``'s
    ``SECTIONS``, every stage's config class) is not followed: a stage reads only its own
    sections (:func:`expected_stage_code`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(root, path) if path.name == "__init__.py" else _module_name(root, path).rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            reference = DOTTED_REFERENCE.fullmatch(node.value.value)
            if reference:
                names.add(reference.group(1))
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def closure(root: Path, entry_files: list[Path]) -> set[Path]:
    """Every first-party file the entry files import, transitively, with their packages' ``__init__.py``."""
    todo, seen = list(entry_files), set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        own = _module_name(root, path).split(".")
        for i in range(1, len(own)):  # running or importing a.b.c runs a/__init__ and a/b/__init__
            found = module_file(root, ".".join(own[:i]))
            if found is not None and found not in seen:
                todo.append(found)
        for name in _imported(root, path):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__
                found = module_file(root, ".".join(parts[:i]))
                if found is not None and found not in seen:
                    todo.append(found)
    return seen


def entry_points(root: Path, cmd: str) -> tuple[list[Path], list[Path]]:
    """``(python files, shell scripts)`` a dvc.yaml ``cmd`` runs."""
    files: list[Path] = []
    scripts: list[Path] = []
    for part in re.split(r"&&|;|\||\n", cmd):
        words = re.sub(r"[\"'()$]", " ", part).split()  # enough of shell syntax to find `-m module` and script paths
        for i, word in enumerate(words):
            if word == "-m" and i + 1 < len(words):
                found = module_file(root, words[i + 1])
                main = found.parent / "__main__.py" if found is not None and found.name == "__init__.py" else found
                if main is not None and main.is_file():
                    files.append(main)
            elif word.endswith(".py") and (root / word).is_file():
                files.append(root / word)
            elif word.endswith(".sh") and (root / word).is_file():
                scripts.append(root / word)
                lines = (root / word).read_text(encoding="utf-8").splitlines()
                inner, _ = entry_points(root, "\n".join(line for line in lines if not line.lstrip().startswith("#")))
                files += inner
    return files, scripts


def stage_code(root: Path, cmd: str) -> set[str]:
    """Repository-relative paths of the code a stage's ``cmd`` runs: its scripts and the import closure."""
    files, scripts = entry_points(root, cmd)
    return {str(p.relative_to(root)) for p in closure(root, files) | set(scripts)}



def plain_cmd(cmd: str) -> str:
    """A dvc.yaml ``cmd`` with its ``${pipeline.train_launcher}`` replaced by ``python``."""
    return re.sub(r"\$\{pipeline\.train_launcher\}", "python", cmd)


def expected_stage_code(root: Path, name: str, cmd: str) -> set[str]:
    """:func:`stage_code` plus the modules of the config classes of the sections stage ``name``
    reads (``etl.core.config.STAGE_SECTIONS``): ``etl.core.config`` imports them by name from
    ``SECTIONS``, which the AST walk does not follow."""
    from etl.core.config import SECTIONS, STAGE_SECTIONS

    modules = [module_file(root, SECTIONS[s].partition(":")[0]) for s in STAGE_SECTIONS.get(name, ()) if name != "report"]
    return stage_code(root, plain_cmd(cmd)) | {str(p.relative_to(root)) for p in closure(root, [p for p in modules if p is not None])}


if __name__ == "__main__":  # print each dvc.yaml stage's code deps: python tests/import_graph.py
    import sys

    import yaml

    ROOT = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(ROOT))
    for stage_name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"].items():
        print(f"{stage_name}:\n" + "".join(f"      - {path}\n" for path in sorted(expected_stage_code(ROOT, stage_name, stage["cmd"]))))
