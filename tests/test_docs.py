"""The documentation stays true to the code: the generated params reference matches its
generator and documents every params.yaml key; every relative link in README.md and docs/
resolves (file and anchor); every ``python -m`` module and source path the docs name exists.

The config registry is found by what it defines (``SECTIONS``), not by its module path, so
these tests keep working when modules move; the docs they check must then follow the move.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
SOURCE_DIRS = ("etl", "augment", "shards", "trainer", "spark_jobs", "scripts", "benchmarks", "tests", "docs")


def registry_module():
    """The module that defines the params registry ``SECTIONS`` (wherever it lives under etl/)."""
    for path in sorted((ROOT / "etl").rglob("*.py")):
        if re.search(r"^SECTIONS\s*:", path.read_text(encoding="utf-8"), re.M):
            parts = path.relative_to(ROOT).with_suffix("").parts
            return importlib.import_module(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    raise AssertionError("no module under etl/ defines the params registry SECTIONS")


# -- the generated params reference ------------------------------------------------------

def test_params_reference_is_up_to_date():
    config = registry_module()
    text, missing = config.params_reference()
    assert missing == [], f"config fields without documentation: {missing}"
    current = (ROOT / config.PARAMS_DOC).read_text(encoding="utf-8")
    assert current == text, (f"{config.PARAMS_DOC} is out of date: run "
                             f"python -m {config.__name__} --write-docs {config.PARAMS_DOC}")


def _documented_keys(cls: type, data: typing.Any, where: str, config, out: dict[str, str]) -> None:
    """Map each dotted params key in ``data`` (loaded into ``cls``) to its documentation."""
    docs, hints = config.field_docs(cls), typing.get_type_hints(cls)
    for key, value in (data or {}).items():
        name = f"{where}.{key}"
        hint = hints.get(key)
        nested = hint if dataclasses.is_dataclass(hint) else None
        inner = typing.get_args(hint)[-1] if typing.get_args(hint) else None
        out[name] = docs.get(key, "") or (nested.__doc__ or "" if nested else "")
        if nested and isinstance(value, dict):
            _documented_keys(nested, value, name, config, out)
        elif dataclasses.is_dataclass(inner) and isinstance(value, dict):
            for item, sub in value.items():  # a mapping of configs: routes.zh, guard.masked_lm
                _documented_keys(inner, sub, f"{name}.{item}", config, out)


def test_every_params_yaml_key_is_documented():
    config = registry_module()
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    docs: dict[str, str] = {}
    for section, data in params.items():
        _documented_keys(config.section_class(section), data, section, config, docs)
    assert len(docs) > 150  # every section, nested ones included
    assert [k for k, v in docs.items() if not v.strip()] == []
    reference = (ROOT / config.PARAMS_DOC).read_text(encoding="utf-8")
    for name in ("clean.quality.gopher.min_words", "dedup.threshold", "augment.guard.<key>", "shards.max_doc_tokens"):
        assert f"`{name.rpartition('.')[0]}`" in reference or f"`{name}`" in reference
    assert "Rae et al. 2021" in docs["clean.quality.gopher"] + docs["clean.quality"]


def test_field_docs_finds_attribute_docstrings_and_reports_gaps():
    config = registry_module()

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Probe:
        """A probe."""

        documented: int = 1
        """Counted, in widgets."""
        helped: str = dataclasses.field(default="x", metadata={"help": "From ``metadata``, with a | pipe."})
        silent: float = 0.5

    assert config.field_docs(Probe) == {"documented": "Counted, in widgets.", "helped": "From `metadata`, with a | pipe."}
    out: list[str] = []
    missing: list[str] = []
    config._section_rows(Probe, "probe", out, missing)
    assert missing == ["probe.silent"]
    assert "| `helped` | str | `\"x\"` | From `metadata`, with a \\| pipe. |" in out


def test_write_docs_refuses_undocumented_fields(tmp_path, monkeypatch):
    config = registry_module()
    monkeypatch.setattr(config, "params_reference", lambda: ("# x\n", ["tfidf.new_knob"]))
    with pytest.raises(ValueError, match="tfidf.new_knob"):
        config.write_params_docs(tmp_path / "params.md")
    assert not (tmp_path / "params.md").exists()


def test_check_docs_command_reports_drift(tmp_path):
    config = registry_module()
    stale = tmp_path / "params.md"
    stale.write_text("# stale\n", encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", config.__name__, "--check-docs", str(stale)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "out of date" in run.stdout, run.stdout + run.stderr
    run = subprocess.run([sys.executable, "-m", config.__name__, "--check-docs", config.PARAMS_DOC],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


# -- links, modules and paths named by the docs ---------------------------------------------

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]+`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        base = slug(heading)
        out.add(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return out


def links(path: Path) -> list[str]:
    text = CODE_SPAN.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_docs_pages_exist():
    names = {p.name for p in DOCS}
    for page in ("README.md", "clean.md", "dedup.md", "tfidf.md", "augment.md", "shards.md", "trainer.md",
                 "hf.md", "ingest.md", "operations.md", "benchmarks.md", "formats.md", "reliability.md", "params.md"):
        assert page in names


def test_every_relative_link_resolves():
    broken = []
    for page in DOCS:
        for target in links(page):
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no heading #{anchor})")
    assert broken == []


def test_link_checker_catches_a_broken_link(tmp_path):
    (tmp_path / "a.md").write_text("# Top title\n\n[ok](#top-title) [bad](b.md) `[code](x.md)`\n", encoding="utf-8")
    assert links(tmp_path / "a.md") == ["#top-title", "b.md"]
    assert anchors(tmp_path / "a.md") == {"top-title"}
    assert slug("`clean.quality` (Gopher)") == "cleanquality-gopher"


def test_named_modules_and_paths_exist():
    modules, paths = set(), set()
    for page in DOCS:
        text = page.read_text(encoding="utf-8")
        modules.update(re.findall(r"python -m ([A-Za-z_][\w.]*)", text))
        prefix = "|".join(SOURCE_DIRS)
        for path in re.findall(rf"(?<![\w/.<-])((?:{prefix})/[\w./-]*\w\.(?:py|sh|md))\b", text):
            paths.add((page.relative_to(ROOT), path))
    modules -= {"pytest", "pip", "venv"}
    assert {"etl.clean", "shards", "trainer.train"} <= modules
    missing = sorted(m for m in modules if importlib.util.find_spec(m) is None)
    assert missing == [], f"python -m names a module that does not exist: {missing}"
    stale = sorted(f"{page}: {path}" for page, path in paths if not (ROOT / path).exists())
    assert stale == [], f"the docs name source files that do not exist: {stale}"


def test_every_spark_setting_jinglian_reads_is_in_the_jobs_help():
    """Each ``spark.jinglian.*`` key the code reads is explained by every Spark job's ``--help``
    (the executor's epilog), with its default."""
    from spark_jobs.executor import EPILOG

    read = set()
    for path in sorted([*(ROOT / "spark_jobs").rglob("*.py"), *(ROOT / "etl").rglob("*.py")]):
        read |= set(re.findall(r'conf\.get\(\s*"(spark\.jinglian\.\w+)"', path.read_text(encoding="utf-8")))
    assert len(read) >= 4
    for key in sorted(read):
        assert re.search(rf"{re.escape(key)} *\(default [\d,]+\)", EPILOG), key
