"""Rewrite each dvc.yaml stage's code deps to what its entry points import (the check in
tests/test_dvc.py, made a fix): ``python tests/fix_dvc_deps.py``. Data deps keep their place;
the code deps follow them, sorted. Comments and layout elsewhere are left alone."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from import_graph import expected_stage_code, is_code_dep  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    text = (ROOT / "dvc.yaml").read_text(encoding="utf-8")
    stages = yaml.safe_load(text)["stages"]
    lines = text.split("\n")
    changed = []
    for name, stage in stages.items():
        start = lines.index(f"  {name}:")
        deps_at = next(i for i in range(start + 1, len(lines)) if lines[i].strip() == "deps:")
        end = deps_at + 1
        while end < len(lines) and re.match(r"\s+- ", lines[end]):
            end += 1
        items = [line.strip()[2:] for line in lines[deps_at + 1:end]]
        is_code = [is_code_dep(d) for d in items]
        data = [d for d, c in zip(items, is_code) if not c]
        code = sorted(expected_stage_code(ROOT, name, stage["cmd"]))
        if sorted(d for d, c in zip(items, is_code) if c) != code:
            changed.append(name)
        indent = re.match(r"\s+", lines[deps_at + 1]).group(0)
        lines[deps_at + 1:end] = [f"{indent}- {d}" for d in data + code]
    (ROOT / "dvc.yaml").write_text("\n".join(lines), encoding="utf-8")
    print(f"dvc.yaml code deps rewritten for: {changed or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
