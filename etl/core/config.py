"""params.yaml loading into frozen, validated dataclasses: the one loader of every entry point.

``params.yaml`` has one section per stage (:data:`SECTIONS`).  :func:`load_params` reads the
file and validates all of it: an unknown section or key is an error naming it and the closest
known name (``claen`` -> did you mean ``clean``?), so a typo never runs silently with the
defaults.  :func:`load_section` / :func:`load_sections` give a stage its configs.
:func:`build_config` turns a section (a dict) into a frozen, keyword-only dataclass: unknown
keys, wrong types and values rejected by the class's ``__post_init__`` raise ``ValueError``
naming the dotted field (``clean.quality.min_words``) and the value.  Nested dataclass fields
are built recursively.
"""
from __future__ import annotations

import ast
import collections.abc
import dataclasses
import difflib
import functools
import hashlib
import importlib
import inspect
import json
import os
import re
import textwrap
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from etl.core.errors import JinglianError

T = TypeVar("T")
#: The repository root when the packages run from a checkout (it has pyproject.toml and params.yaml).
_CHECKOUT = Path(__file__).resolve().parents[2]
#: The default params file: the repository's ``params.yaml`` (the knob file users edit) in a
#: checkout; in an installed jinglian, the copy shipped inside the package
#: (``etl/core/params.yaml``, a link to ``../../params.yaml`` that the wheel stores as a file),
#: so every stage runs without the repository.
PACKAGED_PARAMS = Path(__file__).resolve().parent / "params.yaml"
DEFAULT_PARAMS = (_CHECKOUT / "params.yaml" if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "params.yaml").is_file()
                  else PACKAGED_PARAMS)


def default_params() -> Path:
    """The params file read when none is given: ``params.yaml`` in the current directory (the
    project a user runs from, as DVC's own default), else :data:`DEFAULT_PARAMS`."""
    here = Path("params.yaml")
    return here.resolve() if here.is_file() else DEFAULT_PARAMS


class FrozenDict(dict):
    """A read-only dict for mapping fields of frozen configs; unlike ``MappingProxyType``
    it pickles (Spark ships configs to executors) and compares equal to a plain dict."""

    def _readonly(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("config mappings are read-only; build a new config with dataclasses.replace")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _readonly  # type: ignore[assignment]
    __ior__ = _readonly  # type: ignore[assignment]

    def __hash__(self) -> int:  # frozen dataclasses hash their fields
        return hash(tuple(sorted(self.items(), key=repr)))

    def __reduce__(self):
        return (FrozenDict, (dict(self),))


class ParamsError(JinglianError, ValueError):
    """A params file that cannot be read, or a section, key or value it may not have."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class PipelineParams:
    """What ``dvc.yaml`` runs (the ``pipeline:`` section; read by DVC's templating, not by Python)."""

    inputs: str = "data/sample/*/*.jsonl"
    """Raw inputs of the clean stage (files, directories or globs)."""
    tokenizer_vocab_size: int = 8192
    """BPE vocabulary size of the tokenizer the demo trains on the augmented corpus."""
    train_launcher: str = "torchrun --standalone --nproc_per_node 1"
    """The launcher of the training stage."""
    train_recipe: str = "tiny"
    """The trainer recipe (trainer/recipes.py) the pipeline trains."""
    train_steps: int = 30
    """Optimizer steps of the pipeline's training run."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class SparkParams:
    """Where the Spark stages run (the ``spark:`` section; read by their launcher, ``python -m spark_jobs.submit``)."""

    submit: str = "spark-submit"
    """The spark-submit command (a path, or a wrapper such as a cluster's own)."""
    master: str = "local[2]"
    """Spark master: local[N], spark://HOST:7077, yarn, k8s://https://HOST:443."""
    deploy_mode: str = "client"
    """client: the driver runs where the launcher runs; cluster: on the cluster (YARN, Kubernetes)."""
    archives: list[str] = dataclasses.field(default_factory=list)
    """Archives shipped to every executor, e.g. [dist/jinglian-env.tar.gz#env] (scripts/package.sh builds it)."""
    conf: dict[str, str] = dataclasses.field(default_factory=dict)
    """Spark settings passed as --conf, e.g. {spark.pyspark.python: ./env/bin/python, spark.executor.memory: 8g}."""

    def __post_init__(self) -> None:
        if self.deploy_mode not in ("client", "cluster"):
            raise ValueError(f"spark.deploy_mode must be 'client' or 'cluster', got {self.deploy_mode!r}")
        if not self.master.strip():
            raise ValueError("spark.master must be a Spark master URL, e.g. local[2] or spark://host:7077")
        object.__setattr__(self, "conf", FrozenDict({str(k): str(v) for k, v in self.conf.items()}))


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainParams:
    """The ``train:`` section: a recipe and dotted overrides (validated by ``trainer.config``)."""

    recipe: str = ""
    """Recipe used when --recipe is not given ("" = tiny)."""
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Dotted config fields over the recipe, e.g. {optim.lr: 1.0e-4}."""


#: Every section params.yaml may have, and the dataclass (``module:name``) it is loaded into.
#: Imported lazily: validating the file does not need Spark, torch or megatron.
SECTIONS: dict[str, str] = {
    "pipeline": "etl.core.config:PipelineParams",
    "spark": "etl.core.config:SparkParams",
    "read": "etl.io.records:ReaderConfig",
    "tokenizer": "etl.clean.tokenize:TokenizerConfig",
    "clean": "etl.clean.pipeline:CleanConfig",
    "dedup": "etl.dedup.cluster:DedupConfig",
    "tfidf": "etl.tfidf:TfidfConfig",
    "quality_model": "etl.quality_model.config:QualityModelConfig",
    "augment": "augment.config:AugmentConfig",
    "shards": "shards.config:ShardsConfig",
    "train": "etl.core.config:TrainParams",
}

#: The sections each ``dvc.yaml`` stage's code loads (its DVC ``params``), so a change to one
#: section reruns only the stages that read it.  ``pipeline`` values reach stages through
#: templated ``cmd`` lines, which DVC already compares.  The report shows every section.
#: tests/test_dvc.py checks dvc.yaml against this and this against the stages' code.
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "stream": ("read", "tokenizer", "clean"),  # etl.ingest runs the cleaning pipeline on each window
    "clean": ("read", "tokenizer", "clean", "spark"),  # spark: the launcher (spark_jobs.submit) reads where the job runs
    "dedup": ("read", "dedup", "spark"),
    "tfidf": ("read", "tokenizer", "tfidf", "spark"),
    "quality_train": ("read", "quality_model"),
    "quality": ("read", "quality_model", "spark"),
    "augment": ("read", "augment", "spark"),
    "tokenizer": (),
    "shards": ("read", "shards", "spark"),
    "train": ("train",),
    "report": tuple(SECTIONS),
}


def closest(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the known name closest to ``name``, or ``""``."""
    match = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def unknown_keys_message(where: str, unknown: Iterable[str], known: Iterable[str]) -> str:
    """``where: unknown key 'x' (did you mean 'y'?); known keys: [...]``."""
    unknown, known = sorted(map(str, unknown)), sorted(map(str, known))
    names = "; ".join(f"{u!r}{closest(u, known)}" for u in unknown)
    return f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {names}; known keys: {known}"


def section_class(name: str) -> type:
    """The dataclass of params section ``name`` (:data:`SECTIONS`)."""
    if name not in SECTIONS:
        raise ParamsError(f"params: unknown section {name!r}{closest(name, SECTIONS)}; known sections: {sorted(SECTIONS)}")
    module, _, attr = SECTIONS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def validate_params(params: dict[str, Any], where: str = "params") -> None:
    """Build every section of ``params``: unknown sections/keys and bad values raise
    :class:`ParamsError` naming them (with the closest known name)."""
    unknown = sorted(set(params) - set(SECTIONS), key=str)
    if unknown:
        names = "; ".join(f"{u!r}{closest(u, SECTIONS)}" for u in unknown)
        raise ParamsError(f"{where}: unknown section{'s' if len(unknown) > 1 else ''} {names}; known sections: {sorted(SECTIONS)}")
    for name, section in params.items():
        build_config(section_class(name), section, name)


def load_params(path: str | os.PathLike | None = None, validate: bool = True) -> dict[str, Any]:
    """Read params.yaml (:func:`default_params` when ``path`` is None) as a dict, validated
    (:func:`validate_params`) unless ``validate`` is false."""
    path = Path(path) if path else default_params()
    if not path.is_file():
        raise FileNotFoundError(f"params file {str(path)!r} does not exist (pass --params PATH)")
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        detail = " ".join(str(exc).split())
        raise ParamsError(f"params file {path} is not valid YAML: {detail}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"params file {path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    if validate:
        try:
            validate_params(data)
        except ValueError as exc:
            raise ParamsError(f"{path}: {exc}") from None
    return data


def load_section(params: dict[str, Any] | str | os.PathLike | None, name: str) -> Any:
    """The config of section ``name`` from a params dict or file (missing = defaults)."""
    if not isinstance(params, dict):
        params = load_params(params)
    return build_config(section_class(name), params.get(name), name)


def load_sections(params: dict[str, Any] | str | os.PathLike | None, *names: str) -> tuple[Any, ...]:
    """The configs of several sections, read from one params dict or file."""
    if not isinstance(params, dict):
        params = load_params(params)
    return tuple(load_section(params, name) for name in names)


def params_hash(section: Any) -> str:
    """A short, stable hash of a params section (for manifests and caches)."""
    blob = json.dumps(section, sort_keys=True, default=str, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def build_config(cls: type[T], data: dict[str, Any] | None, where: str) -> T:
    """Build dataclass ``cls`` from ``data``; ``where`` is the dotted name used in errors."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__} {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise ValueError(unknown_keys_message(where, unknown, fields))
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except ValueError as exc:
        msg = str(exc)
        raise ValueError(msg if msg.startswith(where) else f"{where}: {msg}") from None
    except TypeError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return build_config(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{where}: must be one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, collections.abc.Mapping) or hint in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        if len(args) == 2:
            return FrozenDict({k: _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()})
        return FrozenDict(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def config_to_dict(config: Any) -> Any:
    """A plain, JSON-ready view of a (nested) config dataclass."""
    if dataclasses.is_dataclass(config):
        return {f.name: config_to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (types.MappingProxyType, dict)):
        return {k: config_to_dict(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [config_to_dict(v) for v in config]
    return config


# -- the params reference (docs/params.md), generated from the dataclasses' field docstrings --

PARAMS_DOC = "docs/params.md"
_ROLE = re.compile(r":(?:mod|func|class|data|meth|attr):`~?([^`]+)`")
_TAUTOLOGY = re.compile(r"^((The )?`[\w.:]+` section( of params\.yaml)?|[\w -]+ settings)\.?$")


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Documentation of each field of dataclass ``cls``: ``metadata={"help": ...}`` or the
    string literal right after the field (an attribute docstring, read from the class source)."""
    docs: dict[str, str] = {}
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        tree = None
    body = tree.body[0].body if tree and isinstance(tree.body[0], ast.ClassDef) else []
    for node, after in zip(body, body[1:] + [None]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[node.target.id] = after.value.value
    for f in dataclasses.fields(cls):
        if f.metadata.get("help"):
            docs[f.name] = f.metadata["help"]
    return {name: _one_line(text) for name, text in docs.items()}


def _one_line(text: str) -> str:
    """A docstring as one Markdown line: whitespace folded, reST roles and ``literals`` as code."""
    text = " ".join(inspect.cleandoc(text).split())
    return _ROLE.sub(r"`\1`", text).replace("``", "`")


def _nested(hint: Any) -> tuple[type | None, bool]:
    """``(dataclass, keyed)`` when a field holds a config dataclass (``keyed``: a mapping of them)."""
    if dataclasses.is_dataclass(hint):
        return hint, False
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in args:
            found = _nested(arg)
            if found[0]:
                return found
    if len(args) == 2 and dataclasses.is_dataclass(args[1]):
        return args[1], True
    return None, False


def _type_text(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return " \\| ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        names = [_type_text(a) for a in args if a is not type(None)]
        return " \\| ".join(names) + (" \\| null" if type(None) in args else "")
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"list[{_type_text(args[0])}]"
    if origin is not None:
        name = getattr(origin, "__name__", str(origin)).replace("Mapping", "mapping")
        return f"{name}[{', '.join(_type_text(a) for a in args)}]" if args else name
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if dataclasses.is_dataclass(value):
        return "(below)"
    value = config_to_dict(value)
    text = json.dumps(value, ensure_ascii=False, default=str) if not isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return "`" + text.replace("|", "\\|") + "`"


def _section_rows(cls: type, where: str, out: list[str], missing: list[str], intro: str = "") -> None:
    """Append the Markdown of dataclass ``cls`` at dotted name ``where`` (nested ones after it);
    ``intro`` is the parent field's documentation."""
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    about = _one_line(cls.__doc__ or "")
    if _TAUTOLOGY.match(about):  # "The ``clean.html`` section." says nothing the heading doesn't
        about = ""
    out += [f"### `{where}`", ""] + [line for text in (intro, about) if text for line in (text, "")]
    out += ["| key | type | default | meaning |", "|---|---|---|---|"]
    later = []
    for f in fields:
        nested, keyed = _nested(hints[f.name])
        doc = docs.get(f.name) or (_one_line(nested.__doc__ or "") if nested and not keyed else "")
        if not doc:
            missing.append(f"{where}.{f.name}")
        kind = _type_text(hints[f.name]) if not nested or keyed else f"[`{where}.{f.name}`](#{_anchor(f'{where}.{f.name}')})"
        doc = doc.replace("|", "\\|")
        out.append(f"| `{f.name}` | {kind} | {_default_text(f)} | {doc} |")
        if nested:
            later.append((nested, f"{where}.{f.name}" + (".<key>" if keyed else ""), doc))
    out.append("")
    for nested, name, doc in later:
        _section_rows(nested, name, out, missing, doc)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading made of ``heading`` in backticks."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def params_reference() -> tuple[str, list[str]]:
    """The Markdown of ``docs/params.md`` and the dotted fields that have no documentation.

    Every section of :data:`SECTIONS` is imported through the registry, so the reference follows
    the config classes wherever they live."""
    out = ["# params.yaml reference", "",
           f"<!-- generated by `python -m {__name__} --write-docs {PARAMS_DOC}` from the config",
           "     dataclasses' field docstrings: edit those, then regenerate (tests/test_docs.py checks it) -->", "",
           "Every knob of `params.yaml`, one section per stage, with its type, default and meaning. Each",
           "section is loaded into the frozen dataclass named below; an unknown key or a bad value is an",
           "error naming the dotted field. Mappings of configs (`<key>`) take one entry per name. The",
           "defaults are the dataclasses'; the committed `params.yaml` sets some others (the demo's",
           "augmentation runs entity swap only, for example).", ""]
    out += [f"- [`{name}`](#{_anchor(name)}): `{SECTIONS[name]}`" for name in SECTIONS] + [""]
    missing: list[str] = []
    for name in SECTIONS:
        _section_rows(section_class(name), name, out, missing)
    return "\n".join(out).rstrip("\n") + "\n", missing


def write_params_docs(path: str | os.PathLike = PARAMS_DOC) -> None:
    """Write :func:`params_reference` to ``path`` atomically; every field must be documented."""
    from etl.core.atomic import atomic_file

    text, missing = params_reference()
    if missing:
        raise ParamsError(f"params fields without documentation (add a docstring after the field): {missing}")
    with atomic_file(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def main(argv: list[str] | None = None) -> int:
    """``python -m etl.core.config``: validate a params file, or write or check the params reference."""
    from etl.core.cli import ArgumentParser

    parser = ArgumentParser(prog=f"python -m {__name__}",
                            description="Validate a params file, or write or check the params reference.")
    parser.add_argument("--params", default=None, help="params file to validate (default: ./params.yaml, else the repository's, else the installed copy)")
    parser.add_argument("--write-docs", metavar="PATH", help=f"write the params reference generated from the config docstrings to PATH (e.g. {PARAMS_DOC})")
    parser.add_argument("--check-docs", metavar="PATH", help="exit 1 when PATH differs from the generated params reference")
    args = parser.parse_args(argv)
    if args.write_docs:
        write_params_docs(args.write_docs)
        print(f"wrote {args.write_docs}")
    elif args.check_docs:
        text, missing = params_reference()
        if missing or Path(args.check_docs).read_text(encoding="utf-8") != text:
            print(f"{args.check_docs} is out of date (undocumented: {missing}); run python -m {__name__} --write-docs {args.check_docs}")
            return 1
        print(f"{args.check_docs} is up to date")
    else:
        load_params(args.params)
        print(f"{args.params or default_params()}: valid")
    return 0


if __name__ == "__main__":
    from etl.core.errors import run_main

    # run the package's own copy of this module, not __main__ (the section classes import it)
    run_main(importlib.import_module(__spec__.name).main)
