"""Read what ``templatize`` needs: a labelled dataset's rows (a local JSONL, CSV or parquet file, or a Hugging Face
dataset where the hub is reachable: both end as the same ``(row id, row)`` list) and a task's templates from
``prompts/templates/<task>/``. Every problem is an InputError naming the file, the line and the field."""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import jinja2

from ..config import LabelledDataset
from ..errors import InputError
from .tables import SUFFIXES, table_rows

SECTIONS = ("instruction", "input", "output")
_HEADER = re.compile(r"\A\s*\{#-?(.*?)-?#\}", re.DOTALL)
_SECTION = re.compile(r"^### (instruction|input|output)[ \t]*$", re.MULTILINE)
_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)


class TemplateError(ValueError):
    """A template file that cannot be used; the reader turns it into an InputError naming the file."""


@dataclass(frozen=True)
class Template:
    task: str
    id: str
    target: str
    fields: tuple[str, ...]
    choices: tuple[str, ...] = ()
    inverted: bool = False
    only_if: tuple[tuple[str, Any], ...] = ()
    sections: tuple[jinja2.Template, ...] = field(default=(), compare=False, repr=False)
    has_input: bool = True

    @property
    def task_id(self) -> str:
        return f"template/{self.task}/{self.id}"


def parse_template(text: str, task: str, template_id: str) -> Template:
    """A template from its text; raises TemplateError (header, sections, jinja syntax)."""
    m = _HEADER.match(text)
    if not m:
        raise TemplateError("no header: the file must start with a {#- ... -#} comment holding TOML")
    try:
        header = tomllib.loads(m.group(1))
    except tomllib.TOMLDecodeError as e:
        raise TemplateError(f"header is not valid TOML: {e}") from None
    unknown = sorted(set(header) - {"target", "choices", "inverted", "fields", "only_if"})
    if unknown:
        raise TemplateError(f"unknown header key {unknown[0]!r}")
    target = header.get("target")
    if not isinstance(target, str) or not target:
        raise TemplateError("header: target must name the field that holds the answer")
    fields = header.get("fields", [target])
    choices = header.get("choices", [])
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise TemplateError("header: fields must be a list of field names")
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise TemplateError("header: choices must be a list of strings")
    only_if = header.get("only_if", {})
    if not isinstance(only_if, dict):
        raise TemplateError("header: only_if must be a table, e.g. {label = 1}")
    body = text[m.end():]
    parts = _SECTION.split(body)
    names = parts[1::2]
    if sorted(names) != sorted(SECTIONS) or len(names) != 3:
        raise TemplateError("needs exactly one '### instruction', '### input' and '### output' section")
    texts = dict(zip(names, parts[2::2]))
    try:
        compiled = tuple(_ENV.from_string(texts[name].strip()) for name in SECTIONS)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"jinja syntax error on line {e.lineno}: {e.message}") from None
    return Template(task=task, id=template_id, target=target, fields=tuple(dict.fromkeys([*fields, target])),
                    choices=tuple(choices), inverted=bool(header.get("inverted", False)),
                    only_if=tuple(sorted(only_if.items())), sections=compiled,
                    has_input=bool(texts["input"].strip()))



def load_rows(src: LabelledDataset, resolve: Callable[[str], Path] = Path,
              where: str = "templatize.datasets") -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    """(where the rows came from, [(row id, row)]) in dataset order."""
    if src.hf_name:
        origin = f"hub dataset {src.hf_name}"
        try:
            import datasets
        except ImportError:
            raise InputError(where, "hf_name needs the 'datasets' package (the tune extra)", field="hf_name") from None
        try:
            table = datasets.load_dataset(src.hf_name, src.hf_config or None, split=src.split)
        except Exception as e:  # noqa: BLE001 (offline, unknown name, bad split: all one message)
            raise InputError(where, f"could not load {src.hf_name!r} from the Hugging Face hub "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})",
                             field="hf_name") from None
        numbered = enumerate(table, start=1)
    else:
        path = resolve(src.path)
        origin = str(path)
        if not path.is_file():
            raise InputError(str(path), "labelled dataset not found", field=f"{where}.path")
        if path.suffix.lower() not in SUFFIXES:
            raise InputError(str(path), f"a labelled dataset must end in {', '.join(SUFFIXES)}",
                             field=f"{where}.path")
        numbered = table_rows(path)
    rows: list[tuple[str, dict[str, Any]]] = []
    seen: dict[str, int] = {}
    for line, row in numbered:
        if src.id_field:
            if row.get(src.id_field) in (None, ""):
                raise InputError(origin, "the row has no id", line=line, field=src.id_field)
            rid = str(row[src.id_field])
            if rid in seen:
                raise InputError(origin, f"duplicate id {rid!r} (first on line {seen[rid]})", line=line,
                                 field=src.id_field)
            seen[rid] = line
        else:
            rid = str(line)
        rows.append((rid, dict(row)))
    if not rows:
        raise InputError(origin, "the dataset holds no rows", field=where)
    return origin, rows


def load_templates(directory: Path, task: str, ids: list[str] | None = None,
                   where: str = "templatize.datasets") -> list[Template]:
    """The templates of ``directory/<task>/`` (all, or those named in ``ids``), in name order."""
    folder = Path(directory) / task
    if not folder.is_dir():
        known = sorted(p.name for p in Path(directory).iterdir() if p.is_dir()) if Path(directory).is_dir() else []
        raise InputError(str(folder), f"no templates for task {task!r} (known: {', '.join(known) or 'none'})",
                         field=f"{where}.task")
    files = {p.stem: p for p in sorted(folder.glob("*.j2"))}
    missing = [i for i in ids or [] if i not in files]
    if missing:
        raise InputError(str(folder), f"no template {missing[0]!r} (known: {', '.join(files)})",
                         field=f"{where}.templates")
    templates = []
    for name in ids or list(files):
        try:
            templates.append(parse_template(files[name].read_text(encoding="utf-8"), task, name))
        except TemplateError as e:
            raise InputError(str(files[name]), str(e), line=1, field="template") from None
    if not templates:
        raise InputError(str(folder), "holds no templates (*.j2)", field=f"{where}.task")
    return templates
