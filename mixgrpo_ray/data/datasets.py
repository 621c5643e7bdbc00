"""Prompt datasets from local files: plain text, JSON Lines, JSON, Parquet, and the HPDv2 folder.

:func:`read_prompts` turns a *source* string into a list of prompts, in file order, duplicates
kept, each stripped of surrounding whitespace. (``tiny:train`` / ``tiny:eval`` and
``tiny_pairs:train`` / ``tiny_pairs:eval``, the built-in tasks, are handled by
:func:`mixgrpo_ray.data.prompts.load_prompts`, which calls this for everything else.)

Sources
-------
``PATH.txt``
    One prompt per line (UTF-8); blank lines are skipped.
``PATH.jsonl``
    One JSON value per line: a string, or an object with a ``prompt``, ``caption`` or ``text``
    field (the first of these present is used). Blank lines are skipped.
``PATH.json``
    A list of strings or of such objects. HPDv2's annotation files (``train.json``,
    ``test.json``: lists of objects whose prompt field is ``prompt``) read this way, one prompt
    per record, so a prompt annotated several times appears several times.
``PATH.parquet``
    A string column named ``prompt``, ``caption`` or ``text`` (first present), read with pyarrow.
``DIR:train`` / ``DIR:test`` / ``DIR:test/<style>``
    An HPDv2 folder: the annotation files as published in ``huggingface.co/datasets/ymhao/HPDv2``
    and the benchmark prompts as in ``huggingface.co/datasets/zhwang/HPDv2``::

        DIR/train.json               [{"prompt": str, "human_preference": [...], "file_path": [...]}, ...]
        DIR/test.json                [{"prompt": str, "image_path": [...], "rank": [...], ...}, ...]
        DIR/benchmark/anime.json     ["prompt", ...]   (HPSv2 benchmark, one list per style)
        DIR/benchmark/concept-art.json
        DIR/benchmark/paintings.json
        DIR/benchmark/photo.json

    ``:train`` and ``:test`` are the distinct prompts of ``train.json`` / ``test.json`` in order
    of first appearance (the annotation files hold several records per prompt; the released
    test split has 400 prompts, the set docs/algorithm.md §11 evaluates on). ``:test/<style>`` is the list
    in ``benchmark/<style>.json`` for style ``anime``, ``concept-art``, ``paintings`` or
    ``photo`` (the HPSv2 benchmark prompts, kept as they are). Only the file a split names has
    to exist.

Any source may end in ``:N`` (a positive integer): the first ``N`` prompts (all of them when
there are fewer), e.g. ``data/hpdv2:train:9600`` or ``prompts.txt:100``.

Every problem raises ``FileNotFoundError`` (a missing file or folder) or ``ValueError`` (an
unusable file) whose message is one line naming the file, what is wrong and how to fix it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence, TypeVar

#: object fields / Parquet columns that can hold the prompt, in order of preference
PROMPT_FIELDS: tuple[str, ...] = ("prompt", "caption", "text")
#: the HPSv2 benchmark styles shipped as ``benchmark/<style>.json`` in an HPDv2 folder
HPDV2_STYLES: tuple[str, ...] = ("anime", "concept-art", "paintings", "photo")
#: file suffixes :func:`read_prompts` reads
SUFFIXES: tuple[str, ...] = (".txt", ".jsonl", ".json", ".parquet")

_FORMATS_HINT = "use a .txt, .jsonl, .json or .parquet file, or an HPDv2 folder with :train, :test or :test/<style>"

T = TypeVar("T")


def read_prompts(source: str) -> list[str]:
    """The prompts of ``source`` (see the module docstring for the accepted forms)."""
    source = str(source)
    path_part, limit = _split_limit(source)
    path_text, split = _split_hpdv2(path_part)
    path = Path(path_text).expanduser()
    if split is not None:
        prompts = read_hpdv2(path, split)
    else:
        if path.is_dir():
            raise ValueError(
                f"{path}: is a folder; name an HPDv2 split ({path_text}:train, {path_text}:test or "
                f"{path_text}:test/<style>) or a prompt file inside it"
            )
        prompts = read_prompt_file(path)
    return prompts if limit is None else prompts[:limit]


def read_prompt_file(path: str | Path) -> list[str]:
    """The prompts of one file, by suffix: ``.txt``, ``.jsonl``, ``.json`` or ``.parquet``."""
    path = Path(path)
    readers = {".txt": _read_txt, ".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet}
    suffix = path.suffix.lower()
    if suffix not in readers:
        raise ValueError(f"{path}: unsupported prompt file type {suffix or '(no suffix)'!r}; {_FORMATS_HINT}")
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} not found; check the path ({_FORMATS_HINT})")
    prompts = readers[suffix](path)
    if not prompts:
        raise ValueError(f"{path}: contains no prompts; add at least one prompt or choose another file")
    return prompts


def read_hpdv2(root: str | Path, split: str) -> list[str]:
    """The prompts of an HPDv2 folder's ``split``: ``train``, ``test`` or ``test/<style>``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"HPDv2 folder {root} not found; pass the folder holding train.json / test.json "
            f"(huggingface.co/datasets/ymhao/HPDv2) as {root}:{split}"
        )
    if split in ("train", "test"):
        path = root / f"{split}.json"
        if not path.is_file():
            raise FileNotFoundError(f"HPDv2 split {split!r}: {path} not found; download {split}.json of HPDv2 into {root}")
        return _unique(read_prompt_file(path))
    if split.startswith("test/"):
        style = split[len("test/"):]
        if style not in HPDV2_STYLES:
            raise ValueError(
                f"{root}:{split}: unknown HPDv2 benchmark style {style!r}; choose one of {', '.join(HPDV2_STYLES)}"
            )
        path = root / "benchmark" / f"{style}.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"HPDv2 benchmark style {style!r}: {path} not found; download benchmark/{style}.json of HPDv2 into {root}"
            )
        return read_prompt_file(path)
    raise ValueError(f"{root}:{split}: unknown HPDv2 split {split!r}; use train, test or test/<style> ({', '.join(HPDV2_STYLES)})")


def shard(prompts: Sequence[T], index: int, count: int) -> list[T]:
    """Part ``index`` of ``count`` consecutive parts of ``prompts`` whose sizes differ by at most
    one (the first ``len % count`` parts are one longer). Joining parts ``0..count-1`` in order
    gives back ``prompts``."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"shard count must be a positive integer, got {count!r}")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        raise ValueError(f"shard index must be an integer in [0, {count - 1}], got {index!r}")
    base, extra = divmod(len(prompts), count)
    start = index * base + min(index, extra)
    size = base + (1 if index < extra else 0)
    return list(prompts[start : start + size])


# ---------------------------------------------------------------------------------------------
# Source parsing
# ---------------------------------------------------------------------------------------------
def _split_limit(source: str) -> tuple[str, int | None]:
    """``"x:100"`` -> ``("x", 100)``; a source that exists as written is never split."""
    head, sep, tail = source.rpartition(":")
    if not sep or Path(source).expanduser().exists() or not tail.strip().lstrip("+-").isdigit():
        return source, None
    limit = int(tail)
    if limit < 1:
        raise ValueError(f"prompt source {source!r}: the :N suffix must be a positive number of prompts, got {limit}")
    return head, limit


def _split_hpdv2(source: str) -> tuple[str, str | None]:
    """``"DIR:test/photo"`` -> ``("DIR", "test/photo")``; a plain path -> ``(path, None)``."""
    if Path(source).expanduser().exists():
        return source, None
    head, sep, tail = source.rpartition(":")
    if sep and head and (tail in ("train", "test") or tail.startswith("test/")):
        return head, tail
    if sep and head and Path(head).expanduser().is_dir():
        raise ValueError(f"{source}: unknown HPDv2 split {tail!r}; use {head}:train, {head}:test or {head}:test/<style>")
    return source, None


# ---------------------------------------------------------------------------------------------
# Readers (each returns the stripped prompts; emptiness is checked by the caller)
# ---------------------------------------------------------------------------------------------
def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None


def _read_txt(path: Path) -> list[str]:
    return [line.strip() for line in _read_text(path).splitlines() if line.strip()]


def _prompt_of(value: Any, path: Path, where: str) -> str:
    """The prompt in one JSON value: a string, or an object's first prompt field."""
    if isinstance(value, dict):
        key = next((k for k in PROMPT_FIELDS if k in value), None)
        if key is None:
            fields = ", ".join(sorted(map(str, value))[:6]) or "none"
            raise ValueError(
                f"{path}: {where}: object has no {'/'.join(PROMPT_FIELDS)} field (fields: {fields}); "
                f"name the prompt field 'prompt'"
            )
        value, where = value[key], f"{where} field {key!r}"
    if not isinstance(value, str):
        raise ValueError(f"{path}: {where}: prompt must be a string, got {type(value).__name__} {_short(value)}")
    text = value.strip()
    if not text:
        raise ValueError(f"{path}: {where}: prompt is empty; remove the record or fill in its prompt")
    return text


def _read_jsonl(path: Path) -> list[str]:
    out = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{path}: line {number}: malformed JSON ({exc.msg} at column {exc.colno}); "
                f"each line must be one JSON string or object"
            ) from None
        out.append(_prompt_of(value, path, f"line {number}"))
    return out


def _read_json(path: Path) -> list[str]:
    text = _read_text(path)
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: line {exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(data, list):
        hint = " (a JSON Lines file? name it .jsonl)" if isinstance(data, dict) else ""
        raise ValueError(f"{path}: top level must be a list of prompts or of objects, got {type(data).__name__}{hint}")
    return [_prompt_of(value, path, f"item {i}") for i, value in enumerate(data)]


def _read_parquet(path: Path) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    column = next((c for c in PROMPT_FIELDS if c in schema.names), None)
    if column is None:
        raise ValueError(
            f"{path}: no {'/'.join(PROMPT_FIELDS)} column (columns: {', '.join(schema.names[:8]) or 'none'}); "
            f"rename the prompt column to 'prompt'"
        )
    kind = schema.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise ValueError(f"{path}: column {column!r} has type {kind}; prompts must be strings")
    values = pq.read_table(path, columns=[column]).column(column).to_pylist()
    out = []
    for row, value in enumerate(values):
        if value is None:
            raise ValueError(f"{path}: row {row} of column {column!r} is null; drop it or fill in its prompt")
        out.append(_prompt_of(value, path, f"row {row}"))
    return out


def _unique(prompts: list[str]) -> list[str]:
    return list(dict.fromkeys(prompts))


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."
