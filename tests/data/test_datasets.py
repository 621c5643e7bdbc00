"""Prompt files (txt, jsonl, json, parquet, HPDv2 folder): good files read right, bad ones fail
with one clear line."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mixgrpo_ray.data.datasets import HPDV2_STYLES, read_prompts, shard
from mixgrpo_ray.data.prompts import load_prompts


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def one_line(exc_info):
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


# --------------------------------------------------------------------------- good files
def test_txt_strips_and_skips_blank_lines_keeps_order_and_duplicates(tmp_path):
    src = write(tmp_path / "p.txt", "  a cat \n\n\t\nb dog\na cat\r\n  \n")
    assert read_prompts(src) == ["a cat", "b dog", "a cat"]


def test_jsonl_strings_and_objects_with_each_prompt_field(tmp_path):
    lines = ['"plain one"', '{"prompt": " p ", "id": 3}', "", '{"caption": "c"}', '{"text": "t", "x": 1}',
             '{"caption": "ignored", "prompt": "prompt wins"}']
    src = write(tmp_path / "p.jsonl", "\n".join(lines) + "\n")
    assert read_prompts(src) == ["plain one", "p", "c", "t", "prompt wins"]


def test_json_list_of_strings_and_of_objects(tmp_path):
    assert read_prompts(write(tmp_path / "a.json", json.dumps(["x", " y ", "x"]))) == ["x", "y", "x"]
    objs = [{"caption": "one"}, {"text": "two"}, "three"]
    assert read_prompts(write(tmp_path / "b.json", json.dumps(objs))) == ["one", "two", "three"]


def test_parquet_prompt_column_and_fallback_column_names(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3], "prompt": ["a", " b", "a"]}), path)
    assert read_prompts(str(path)) == ["a", "b", "a"]
    path2 = tmp_path / "c.parquet"
    pq.write_table(pa.table({"caption": pa.array(["c1", "c2"], type=pa.large_string())}), path2)
    assert read_prompts(str(path2)) == ["c1", "c2"]


def test_limit_suffix_takes_the_first_n(tmp_path):
    src = write(tmp_path / "p.txt", "a\nb\nc\n")
    assert read_prompts(src + ":2") == ["a", "b"]
    assert read_prompts(src + ":10") == ["a", "b", "c"]
    with pytest.raises(ValueError, match="positive"):
        read_prompts(src + ":0")


def test_load_prompts_reads_files_through_datasets(tmp_path):
    src = write(tmp_path / "p.txt", "hello\n")
    assert load_prompts(src) == ["hello"]


# --------------------------------------------------------------------------- HPDv2 folder
def hpdv2_folder(tmp_path):
    root = tmp_path / "hpdv2"
    (root / "benchmark").mkdir(parents=True)
    train = [
        {"human_preference": [1, 0], "prompt": "a castle", "file_path": ["t/0.jpg", "t/1.jpg"]},
        {"human_preference": [0, 1], "prompt": "a castle", "file_path": ["t/0.jpg", "t/2.jpg"]},
        {"human_preference": [1, 0], "prompt": "a red fox", "file_path": ["t/3.jpg", "t/4.jpg"]},
    ]
    test = [
        {"prompt": f"test prompt {i}", "image_path": [f"{i}_{k}.jpg" for k in range(3)], "rank": [1, 2, 3],
         "raw_annotations": [{"rank": [1, 2, 3], "user_hash": "u"}]}
        for i in range(5)
    ]
    (root / "train.json").write_text(json.dumps(train))
    (root / "test.json").write_text(json.dumps(test))
    for style in HPDV2_STYLES:
        (root / "benchmark" / f"{style}.json").write_text(json.dumps([f"{style} {i}" for i in range(4)]))
    return root


def test_hpdv2_splits_and_styles(tmp_path):
    root = hpdv2_folder(tmp_path)
    # the splits are the distinct prompts, in order of first appearance
    assert read_prompts(f"{root}:train") == ["a castle", "a red fox"]
    assert read_prompts(f"{root}:test") == [f"test prompt {i}" for i in range(5)]
    assert read_prompts(f"{root}:test:2") == ["test prompt 0", "test prompt 1"]
    for style in HPDV2_STYLES:
        assert read_prompts(f"{root}:test/{style}") == [f"{style} {i}" for i in range(4)]
    assert read_prompts(f"{root}:test/photo:3") == ["photo 0", "photo 1", "photo 2"]
    # the annotation file itself reads record by record (duplicates kept)
    assert read_prompts(str(root / "train.json")) == ["a castle", "a castle", "a red fox"]


def test_hpdv2_errors(tmp_path):
    root = hpdv2_folder(tmp_path)
    with pytest.raises(ValueError) as e:
        read_prompts(str(root))
    assert ":train" in one_line(e)
    with pytest.raises(ValueError) as e:
        read_prompts(f"{root}:test/cartoon")
    assert "concept-art" in one_line(e)
    with pytest.raises(ValueError) as e:
        read_prompts(f"{root}:valid")
    assert "unknown HPDv2 split" in one_line(e)
    (root / "benchmark" / "photo.json").unlink()
    with pytest.raises(FileNotFoundError) as e:
        read_prompts(f"{root}:test/photo")
    assert "photo.json" in one_line(e)
    (root / "train.json").unlink()
    with pytest.raises(FileNotFoundError) as e:
        read_prompts(f"{root}:train")
    assert "train.json" in one_line(e)
    with pytest.raises(FileNotFoundError) as e:
        read_prompts(f"{tmp_path / 'nowhere'}:test")
    assert "nowhere" in one_line(e)


# --------------------------------------------------------------------------- bad files
def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        read_prompts(str(tmp_path / "missing.txt"))
    assert "missing.txt" in one_line(e)
    with pytest.raises(ValueError) as e:
        read_prompts(write(tmp_path / "p.csv", "prompt\na\n"))
    assert ".csv" in one_line(e)


@pytest.mark.parametrize("name,text", [("e.txt", "\n  \n"), ("e.jsonl", "\n"), ("e.json", "[]"), ("f.json", "  ")])
def test_empty_files(tmp_path, name, text):
    with pytest.raises(ValueError) as e:
        read_prompts(write(tmp_path / name, text))
    assert name in one_line(e) and "no prompts" in one_line(e)


def test_empty_parquet(tmp_path):
    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], type=pa.string())}), path)
    with pytest.raises(ValueError, match="no prompts"):
        read_prompts(str(path))


def test_malformed_jsonl_names_the_line(tmp_path):
    src = write(tmp_path / "bad.jsonl", '"ok"\n\n{"prompt": "fine"}\n{"prompt": oops}\n')
    with pytest.raises(ValueError) as e:
        read_prompts(src)
    msg = one_line(e)
    assert "bad.jsonl" in msg and "line 4" in msg and "malformed JSON" in msg


def test_malformed_json_names_the_line(tmp_path):
    src = write(tmp_path / "bad.json", '[\n "a",\n "b"\n "c"\n]')
    with pytest.raises(ValueError) as e:
        read_prompts(src)
    assert "bad.json" in one_line(e) and "line 4" in one_line(e)


def test_json_top_level_must_be_a_list(tmp_path):
    with pytest.raises(ValueError) as e:
        read_prompts(write(tmp_path / "d.json", '{"prompt": "a"}'))
    assert ".jsonl" in one_line(e)


@pytest.mark.parametrize(
    "name,text,where",
    [
        ("n.jsonl", '"a"\n{"prompt": 5}\n', "line 2"),
        ("n.jsonl", '"a"\n["x"]\n', "line 2"),
        ("n.json", '["a", null]', "item 1"),
        ("n.json", '[{"prompt": ["x"]}]', "item 0"),
        ("n.jsonl", '{"prompt": "   "}\n', "line 1"),
    ],
)
def test_non_string_or_empty_prompts(tmp_path, name, text, where):
    with pytest.raises(ValueError) as e:
        read_prompts(write(tmp_path / name, text))
    msg = one_line(e)
    assert name in msg and where in msg


def test_object_without_prompt_field(tmp_path):
    with pytest.raises(ValueError) as e:
        read_prompts(write(tmp_path / "o.jsonl", '{"title": "a", "url": "u"}\n'))
    msg = one_line(e)
    assert "line 1" in msg and "title" in msg and "prompt" in msg


def test_parquet_errors(tmp_path):
    nocol = tmp_path / "nocol.parquet"
    pq.write_table(pa.table({"title": ["a"], "score": [1.0]}), nocol)
    with pytest.raises(ValueError) as e:
        read_prompts(str(nocol))
    assert "nocol.parquet" in one_line(e) and "title" in one_line(e)
    ints = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"prompt": [1, 2]}), ints)
    with pytest.raises(ValueError, match="must be strings"):
        read_prompts(str(ints))
    nulls = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"prompt": ["a", None]}), nulls)
    with pytest.raises(ValueError, match="row 1"):
        read_prompts(str(nulls))
    junk = write(tmp_path / "junk.parquet", "not parquet at all")
    with pytest.raises(ValueError) as e:
        read_prompts(junk)
    assert "junk.parquet" in one_line(e)


def test_non_utf8_text(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="UTF-8"):
        read_prompts(str(path))


# --------------------------------------------------------------------------- sharding
@pytest.mark.parametrize("n,count", [(10, 3), (3, 5), (0, 2), (7, 1)])
def test_shards_are_balanced_and_rejoin_to_the_input(n, count):
    items = [f"p{i}" for i in range(n)]
    parts = [shard(items, i, count) for i in range(count)]
    assert [x for p in parts for x in p] == items
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_shard_rejects_bad_index_and_count():
    with pytest.raises(ValueError):
        shard(["a"], 2, 2)
    with pytest.raises(ValueError):
        shard(["a"], -1, 2)
    with pytest.raises(ValueError):
        shard(["a"], 0, 0)
