"""DVC: dvc.yaml's declared code and params against the code, then the pipeline end to end.

The first tests read dvc.yaml and the code only (no DVC run): every stage's code deps are
exactly the import closure of the entry points its ``cmd`` runs (:mod:`tests.import_graph`),
and its params are exactly the sections its code loads (``etl.core.config.STAGE_SECTIONS``).
The DVC tier runs the repository's dvc.yaml on a tiny sample in a throw-away copy: ``dvc
repro`` runs every stage, a changed param reruns only the stages downstream of it, a forced
rerun writes byte-identical outputs (dvc.lock unchanged), and ``dvc push`` / ``dvc pull``
restore outputs from the in-repository remote.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from import_graph import closure, entry_points, expected_stage_code, is_code_dep, plain_cmd, stage_code

from etl.core.config import SECTIONS, STAGE_SECTIONS

ROOT = Path(__file__).resolve().parent.parent
CODE = ("etl", "augment", "shards", "trainer", "spark_jobs", "scripts")
STAGES = ["stream", "clean", "dedup", "tfidf", "augment", "tokenizer", "shards", "train", "report"]


def _dvc_stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def _dep_paths(stage: dict) -> list[str]:
    return [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]


def _code_deps(stage: dict) -> set[str]:
    """The stage's deps that are code: .py files and shell scripts (folders are not allowed: a
    folder dep reruns the stage when any file in it changes, used or not)."""
    return {d for d in _dep_paths(stage) if is_code_dep(d)}


def _section_literals(path: Path) -> set[str]:
    """Params sections ``path`` names in ``load_section(s)(..., "x")``, ``params.get("x")``, ``params["x"]``
    or a stage declaration's ``sections=("x", ...)``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("load_section", "load_sections", "get"):
            found.update(a.value for a in node.args if isinstance(a, ast.Constant) and a.value in SECTIONS)
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value in SECTIONS:
            found.add(node.slice.value)
        elif isinstance(node, ast.keyword) and node.arg == "sections" and isinstance(node.value, ast.Tuple):
            found.update(e.value for e in node.value.elts if isinstance(e, ast.Constant) and e.value in SECTIONS)  # Stage(sections=...)
    return found


def test_every_stage_declares_exactly_the_code_its_entry_points_import():
    stages = _dvc_stages()
    assert set(stages) == set(STAGE_SECTIONS), "dvc.yaml stages and etl.core.config.STAGE_SECTIONS differ"
    produced = {next(iter(o)) if isinstance(o, dict) else o for st in stages.values() for key in ("outs", "metrics", "plots") for o in st.get(key, [])}
    problems = []
    for name, stage in stages.items():
        declared, expected = _code_deps(stage), expected_stage_code(ROOT, name, stage["cmd"])
        assert expected, f"stage {name}: no entry point found in its cmd"
        missing, stale = sorted(expected - declared), sorted(declared - expected)
        if missing or stale:
            problems.append(f"stage {name}: missing deps {missing}, stale deps {stale}")
        problems += [f"stage {name}: dep {d} does not exist" for d in _dep_paths(stage)
                     if not (ROOT / d).exists() and not any(d == o or d.startswith(o + "/") for o in produced)]
    assert not problems, "dvc.yaml deps do not match the import graph:\n" + "\n".join(problems)


def test_every_stage_declares_exactly_the_params_sections_its_code_loads():
    stages = _dvc_stages()
    for name, stage in stages.items():
        declared = [p if isinstance(p, str) else next(iter(p)) for p in stage.get("params", [])]
        assert declared == list(STAGE_SECTIONS[name]), f"stage {name}: dvc.yaml params {declared} != STAGE_SECTIONS {list(STAGE_SECTIONS[name])}"
        if name == "report":
            continue  # shows the whole params file
        files, _ = entry_points(ROOT, plain_cmd(stage["cmd"]))
        loaded = set().union(*(_section_literals(p) for p in closure(ROOT, files)))
        assert set(declared) <= loaded, f"stage {name}: declares sections its code never loads: {sorted(set(declared) - loaded)}"
        entry_loads = set().union(*(_section_literals(p) for p in files))
        assert entry_loads <= set(declared), f"stage {name}: its entry points load undeclared sections {sorted(entry_loads - set(declared))}"


def test_the_deps_check_sees_a_missing_module(tmp_path):
    """The closure follows a lazy import inside a function into a package's module."""
    (tmp_path / "etl").mkdir()
    (tmp_path / "etl" / "__init__.py").write_text("")
    (tmp_path / "etl" / "a.py").write_text("def f():\n    from etl import b\n    return b\n")
    (tmp_path / "etl" / "b.py").write_text("from .c import X\n")
    (tmp_path / "etl" / "c.py").write_text("X = 1\n")
    (tmp_path / "etl" / "unused.py").write_text("")
    assert stage_code(tmp_path, "python -m etl.a --flag x") == {"etl/__init__.py", "etl/a.py", "etl/b.py", "etl/c.py"}


def test_the_deps_check_follows_a_stages_dotted_reference_to_its_spark_function(tmp_path):
    """``Stage(spark_corpus="pkg.mod:function")`` is imported by name when the stage runs on
    Spark, so that module (and what it imports) is code the stage runs; a table of references
    (etl.core.config's sections) is not followed. Without this, editing a Spark whole-corpus
    function (spark_jobs/corpus/dedup.py) would not rerun its stage."""
    (tmp_path / "etl").mkdir()
    (tmp_path / "spark_jobs").mkdir()
    for package in ("etl", "spark_jobs"):
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "etl" / "stage.py").write_text(
        'STAGE = dict(name="x", spark_corpus="spark_jobs.core:run")\n'
        'TABLE = {"other": "etl.other:Config"}\n')
    (tmp_path / "etl" / "other.py").write_text("")
    (tmp_path / "spark_jobs" / "core.py").write_text("from spark_jobs import helpers\n")
    (tmp_path / "spark_jobs" / "helpers.py").write_text("")
    assert stage_code(tmp_path, "python -m etl.stage") == {
        "etl/__init__.py", "etl/stage.py", "spark_jobs/__init__.py", "spark_jobs/core.py", "spark_jobs/helpers.py"}
    assert "spark_jobs/corpus/dedup.py" in expected_stage_code(ROOT, "dedup", _dvc_stages()["dedup"]["cmd"])


def _run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def _tiny_sample(data_dir: Path, target: Path) -> None:
    picks = {"general/general.jsonl": [("general_en.jsonl", 12), ("general_zh.jsonl", 20)],
             "domain/medical.jsonl": [("domain_medical.jsonl", 16)],
             "expert/expert.jsonl": [("expert.jsonl", 12)],
             "dialogues/dialogues.jsonl": [("dialogues.jsonl", 4)]}
    for rel, sources in picks.items():
        lines = []
        for name, n in sources:
            lines += (data_dir / name).read_text(encoding="utf-8").splitlines(keepends=True)[:n]
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        (target / rel).write_text("".join(lines), encoding="utf-8")


def _ran(output: str) -> list[str]:
    return [s for s in STAGES if re.search(rf"Running stage '{s}'", output)]


@pytest.fixture(scope="module")
def project(tmp_path_factory, data_dir):
    """A git + DVC copy of the repository's pipeline with a tiny sample and small demo sizes."""
    proj = tmp_path_factory.mktemp("dvcproj")
    for name in CODE:
        shutil.copytree(ROOT / name, proj / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", proj / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["pipeline"].update(tokenizer_vocab_size=600, train_steps=3)
    params["spark"]["master"] = "local[1]"
    params["shards"].update(min_shards=4, max_doc_tokens=256)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")
    _tiny_sample(data_dir, proj / "data" / "sample")
    shutil.copytree(ROOT / "data" / "augment", proj / "data" / "augment")
    kafka = (ROOT / "data" / "kafka_sample" / "messages.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:16]
    (proj / "data" / "kafka_sample").mkdir(parents=True)
    (proj / "data" / "kafka_sample" / "messages.jsonl").write_text("".join(kafka), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(proj), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable, DVC_NO_ANALYTICS="1",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    _run(["git", "init", "-q"], proj, env)
    _run([sys.executable, "-m", "dvc", "init", "-q"], proj, env)
    shutil.copy(ROOT / ".dvc" / "config", proj / ".dvc" / "config")
    template = ROOT / ".dvc" / "plots-offline.html"
    assert template.is_file(), f"{template} is missing: scripts/setup.sh builds it (npm pack of vega, vega-lite, vega-embed)"
    shutil.copy(template, proj / ".dvc" / template.name)
    _run(["git", "add", "-A"], proj, env)
    _run(["git", "commit", "-qm", "tiny pipeline"], proj, env)
    first = _run([sys.executable, "-m", "dvc", "repro"], proj, env)
    return proj, env, first.stdout + first.stderr


@pytest.mark.dvc
@pytest.mark.slow
def test_repro_runs_every_stage_and_writes_the_report(project):
    proj, env, output = project
    assert _ran(output) == STAGES
    clean = json.loads((proj / "data/pipeline/clean/stats.json").read_text())
    landed = sum(pq.read_metadata(p).num_rows for p in (proj / "data/stream/kept").glob("*.parquet"))
    dead = [json.loads(line) for p in (proj / "data/stream/dead-letter").glob("*.jsonl") for line in p.read_text().splitlines()]
    assert len(dead) == 1 and dead[0]["reason"] == "invalid_json"  # the one malformed line in the Kafka slice
    assert landed == 15 and clean["num_in"] == 12 + 20 + 16 + 12 + 4 + landed  # the sample plus the landed windows
    metrics = json.loads((proj / "reports/pipeline.json").read_text())
    assert set(metrics) == {"shards", "train"} and metrics["train"]["steps"] == 3
    assert abs(sum(v for k, v in metrics["shards"].items() if k.startswith("share_")) - 1) < 1e-3
    for stage in ("clean", "dedup", "tfidf", "augment"):
        stats = json.loads((proj / f"data/pipeline/{stage}/stats.json").read_text())
        headline = json.loads((proj / f"data/pipeline/{stage}/metrics.json").read_text())
        assert headline == {"docs_in": stats["num_in"], "docs_kept": stats["num_kept"], "docs_rejected": stats["num_rejected"],
                            "kept_share": round(stats["num_kept"] / stats["num_in"], 4)}
        assert "elapsed_s" not in stats and "wall_s" in json.loads((proj / f"data/pipeline/{stage}/timing.json").read_text())
    assert (proj / "reports/figures/loss.png").is_file() and (proj / "reports/plots/loss.csv").is_file()
    status = _run([sys.executable, "-m", "dvc", "status"], proj, env).stdout
    assert "up to date" in status


def _digests(proj: Path) -> dict[str, str]:
    """md5 of every file under the pipeline's output folders."""
    return {str(p.relative_to(proj)): hashlib.md5(p.read_bytes()).hexdigest()
            for folder in ("data/stream", "data/pipeline", "reports") for p in sorted((proj / folder).rglob("*")) if p.is_file()}


#: Files written on every run that DVC does not track: wall times, the human report, the
#: evaluation (generation speed) and the trainer's full metrics and plots.
UNTRACKED = re.compile(r"(^|/)timing\.json$|^reports/report\.md$|^reports/eval/|^reports/train/|^reports/train_run\.jsonl$")


@pytest.mark.dvc
@pytest.mark.slow
def test_forced_rerun_writes_byte_identical_outputs_and_leaves_dvc_lock_unchanged(project):
    proj, env, _ = project
    lock, before = (proj / "dvc.lock").read_text(), _digests(proj)
    out = _run([sys.executable, "-m", "dvc", "repro", "--force"], proj, env)
    assert _ran(out.stdout + out.stderr) == STAGES
    after = _digests(proj)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k) and not UNTRACKED.search(k))
    assert changed == [], f"outputs differ after a forced rerun: {changed}"
    assert (proj / "dvc.lock").read_text() == lock
    spark_parts = [p.name for p in (proj / "data/pipeline/clean/kept").iterdir()]
    assert spark_parts and all(re.fullmatch(r"part-\d{5}-c\d{3}\.zstd\.parquet", n) for n in spark_parts), spark_parts


@pytest.mark.dvc
@pytest.mark.slow
def test_metrics_show_is_a_few_headline_columns(project):
    proj, env, _ = project
    shown = json.loads(_run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], proj, env).stdout)
    files = next(iter(shown.values()))["data"]
    columns = {(path, key) for path, entry in files.items() for key in entry["data"]}
    assert {p for p, _ in columns} == {f"data/pipeline/{s}/metrics.json" for s in ("clean", "dedup", "tfidf", "quality", "augment")} | {"reports/pipeline.json"}
    assert len({key for _, key in columns}) <= 6  # docs_in, docs_kept, docs_rejected, kept_share; shards; train


@pytest.mark.dvc
@pytest.mark.slow
def test_plots_show_works_offline_and_draws_every_group(project):
    proj, env, _ = project
    _run([sys.executable, "-m", "dvc", "plots", "show", "--out", "plots-html"], proj, env)
    page = (proj / "plots-html" / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]+src=", page), "the page loads a script from outside"
    assert "cdn.jsdelivr" not in page and page.count("<script>") >= 3  # vega, vega-lite, vega-embed inlined
    for field in ("loss", "loss_general", "loss_domain", "loss_expert", "general", "domain", "expert", "tokens"):
        assert f'"field": "{field}"' in page, field  # every mix group's loss and share, tokens per record domain
    assert "Tokens in the shards per record domain" in page


@pytest.mark.dvc
@pytest.mark.slow
def test_default_remote_lives_inside_a_fresh_clone(project, tmp_path):
    proj, env, _ = project
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(proj), str(clone)], tmp_path, env)
    name = _run([sys.executable, "-m", "dvc", "config", "core.remote"], clone, env).stdout.strip()
    url = _run([sys.executable, "-m", "dvc", "config", f"remote.{name}.url"], clone, env).stdout.strip()
    resolved = (clone / ".dvc" / url).resolve() if not os.path.isabs(url) else Path(url)
    assert resolved.parent == clone.resolve() and resolved.name == ".dvc-storage"
    assert ".dvc-storage" in (ROOT / ".gitignore").read_text()


@pytest.mark.dvc
@pytest.mark.slow
def test_changed_param_reruns_only_downstream_stages(project):
    proj, env, _ = project
    params = yaml.safe_load((proj / "params.yaml").read_text(encoding="utf-8"))
    params["shards"]["seed"] = 7
    (proj / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")
    out = _run([sys.executable, "-m", "dvc", "repro"], proj, env)
    assert _ran(out.stdout + out.stderr) == ["shards", "train", "report"]


@pytest.mark.dvc
@pytest.mark.slow
def test_push_and_pull_restore_outputs_from_the_local_remote(project):
    proj, env, _ = project
    _run([sys.executable, "-m", "dvc", "push"], proj, env)
    assert any((proj / ".dvc-storage").rglob("*"))
    kept = proj / "data/pipeline/clean/kept"
    before = sorted(p.name for p in kept.iterdir())
    shutil.rmtree(kept)
    shutil.rmtree(proj / ".dvc" / "cache")
    _run([sys.executable, "-m", "dvc", "pull"], proj, env)
    assert sorted(p.name for p in kept.iterdir()) == before
    assert "up to date" in _run([sys.executable, "-m", "dvc", "status"], proj, env).stdout
