"""A fresh build of each built-in world (the clean one, and a few clips of the realistic one, whose
samples carry `nuisances` and whose build.json carries `heldout_triples`) checked against
docs/shards.md -- member names, every json field and its type, manifests, stats, build.json,
failures, vocab.json, Parquet schemas -- with the tables read from the document itself; the format
version follows the document's rule; readers accept older minor versions and refuse a major version
they do not know."""

from __future__ import annotations

import io
import json
import re
import subprocess
import tarfile
from pathlib import Path
from urllib.parse import unquote

import pyarrow.parquet as pq
import pytest
from conftest import REPO, SMALL_BUILD, copy_build, one_line_error, tool
from PIL import Image

from vidcap.pipeline.frames_job import ShardTask, build_shard
from vidcap.pipeline.nuisances import NUISANCES
from vidcap.shards.layout import FORMAT_VERSION, DataInfo
from vidcap.shards.reader import ShardError

DOC = REPO / "docs" / "shards.md"
TABLES = ("sample-json", "sample-object", "sample-footage", "manifest", "manifest-shard", "stats", "build", "failure", "vocab",
          "parquet attributes.parquet", "parquet clip_attributes.parquet", "parquet cider_df.parquet")


def contract() -> dict[str, list[dict[str, str]]]:
    """{name: rows} of each table that follows a `<!-- contract: NAME -->` line of docs/shards.md."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    tables = {}
    for i, line in enumerate(lines):
        marker = re.fullmatch(r"<!-- contract: (.+) -->", line.strip())
        if marker:
            rows = []
            for row in lines[i + 1 :]:
                if not row.startswith("|"):
                    break
                rows.append([c.strip().strip("`") for c in row.strip().strip("|").split("|")])
            head, body = rows[0], rows[2:]
            tables[marker.group(1)] = [dict(zip(head, r, strict=True)) for r in body]
    return tables


def has_type(value: object, kind: str) -> bool:
    """A JSON value read by Python's json against a docs/shards.md type name."""
    scalar = {"str": str, "float": float, "bool": bool, "object": dict}
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind in scalar:
        return isinstance(value, scalar[kind])
    inner = re.fullmatch(r"list\[(.+)\]", kind)
    if inner:
        return isinstance(value, list) and all(has_type(v, inner.group(1)) for v in value)
    inner = re.fullmatch(r"dict\[str, (.+)\]", kind)
    if inner:
        return isinstance(value, dict) and all(isinstance(k, str) and has_type(v, inner.group(1)) for k, v in value.items())
    raise AssertionError(f"docs/shards.md: unknown type {kind!r}")


def check(obj: dict, table: str, where: str) -> None:
    rows = contract()[table]
    extra = set(obj) - {r["field"] for r in rows}
    assert not extra, f"{where}: fields not in docs/shards.md ({table}): {sorted(extra)}"
    for r in rows:
        if r["presence"] == "required":
            assert r["field"] in obj, f"{where}: required field {r['field']!r} missing"
        if r["field"] in obj:
            assert has_type(obj[r["field"]], r["type"]), f"{where}: {r['field']}={obj[r['field']]!r} is not {r['type']}"


def key_of(clip_id: str) -> str:
    """docs/shards.md's KEY rule, written independently of pipeline.shards.sample_key."""
    return "".join(c if re.fullmatch(r"[A-Za-z0-9_-]", c) else "".join(f"%{b:02X}" for b in c.encode()) for c in clip_id)


@pytest.fixture(scope="module")
def built_real(tmp_path_factory) -> Path:
    """Eight clips of the realistic world, built as the clean ones are."""
    from vidcap.pipeline.build import BuildConfig, build
    from vidcap.pipeline.synth import synthesize

    root = tmp_path_factory.mktemp("real-contract") / "ds"
    synthesize(root, clips=8, seed=4, world="real", workers=2, progress=False)
    out = root.parent / "out"
    build(BuildConfig(dataset="msrvtt", root=str(root), out=str(out), workers=1, **SMALL_BUILD))
    return out


def test_the_document_has_every_contract_table_and_its_version_is_the_code_s():
    assert sorted(contract()) == sorted(TABLES)
    text = DOC.read_text()
    assert text.splitlines()[0] == f"# The shard contract (format version {FORMAT_VERSION})"
    # the version table's last row is this version, and every optional field it names a row of a table
    history = re.findall(r"^\| (\d+\.\d+) \| (.+) \|$", text, re.M)
    assert history[-1][0] == FORMAT_VERSION
    fields = {r["field"] for rows in contract().values() for r in rows if "field" in r}
    for _, what in history[1:]:
        named = re.findall(r"`([a-z_]+)` in", what)
        assert named and set(named) <= fields, what


def test_a_new_optional_field_is_a_minor_bump():
    """docs/shards.md's rule, against the fields: every optional field added since 1.0 (named in the
    version table) is optional in its table, and the version is 1.(number of additions)."""
    text = DOC.read_text()
    history = re.findall(r"^\| (\d+\.\d+) \| (.+) \|$", text, re.M)
    optional = {r["field"] for rows in contract().values() for r in rows if r.get("presence") == "optional"}
    for version, what in history[1:]:
        assert version.split(".")[0] == "1" and set(re.findall(r"`([a-z_]+)` in", what)) <= optional, version
    assert FORMAT_VERSION == f"1.{len(history) - 1}"


@pytest.mark.parametrize("world", ["clean", "real"])
def test_a_fresh_build_keeps_the_contract_field_by_field(world, request):
    out = request.getfixturevalue("built_small" if world == "clean" else "built_real")
    samples, recorded, scenes = 0, set(), 0
    for split in ("train", "val", "test"):
        manifest = json.loads((out / "shards" / f"manifest-{split}.json").read_text())
        check(manifest, "manifest", f"manifest-{split}.json")
        assert manifest["format_version"] == FORMAT_VERSION and manifest["split"] == split
        k, size = manifest["frames"], manifest["size"]
        for entry in manifest["shards"]:
            check(entry, "manifest-shard", entry["name"])
            assert re.fullmatch(rf"{split}-\d{{6}}\.tar", entry["name"])
            stats = json.loads((out / "shards" / entry["name"].replace(".tar", "_stats.json")).read_text())
            check(stats, "stats", f"{entry['name']} stats")
            with tarfile.open(out / "shards" / entry["name"]) as tar:
                members = tar.getmembers()
                assert all(m.isreg() and m.mtime == 0 and "/" not in m.name for m in members)
                by_key: dict[str, dict[str, bytes]] = {}
                for m in members:
                    key, _, rest = m.name.partition(".")
                    assert key not in by_key or list(by_key)[-1] == key, f"{m.name}: a sample's members not contiguous"
                    by_key.setdefault(key, {})[rest] = tar.extractfile(m).read()
            assert len(by_key) == entry["samples"]
            for key, parts in by_key.items():
                assert sorted(parts) == sorted([*(f"{i}.jpg" for i in range(k)), "json"]), (key, sorted(parts))
                meta = json.loads(parts["json"].decode("utf-8"))
                check(meta, "sample-json", f"{entry['name']}:{key}.json")
                for obj in meta.get("objects", []):
                    check(obj, "sample-object", f"{key}.json objects")
                if "footage" in meta:
                    check(meta["footage"], "sample-footage", f"{key}.json footage")
                    scenes += 1
                for name, value in meta.get("nuisances", {}).items():  # in the unit of the table's entry
                    recorded.add(name)
                    if name in NUISANCES:
                        lo, hi = NUISANCES[name].world.low, NUISANCES[name].world.high
                        assert lo - 1e-4 <= value <= hi + 1e-4, (key, name, value)
                    else:
                        assert name in ("background", "distractor") and isinstance(value, str), (key, name)
                assert key == key_of(meta["clip_id"]) and unquote(key) == meta["clip_id"] and meta["split"] == split
                assert meta["size"] == size and len(meta["frame_indices"]) == len(meta["timestamps"]) == k
                for i in range(k):
                    with Image.open(io.BytesIO(parts[f"{i}.jpg"])) as img:
                        assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (size, size))
            samples += len(by_key)
        assert manifest["samples"] == sum(e["samples"] for e in manifest["shards"])
    assert "objects" in meta  # the built-in ground truth
    build = json.loads((out / "build.json").read_text())
    check(build, "build", "build.json")
    if world == "clean":
        assert samples == 24 and not recorded and not scenes and "heldout_triples" not in build  # synth_small
    else:
        assert samples == 8 and len(build["heldout_triples"]) == 10 and "background" in recorded
        assert scenes >= 1  # a real scene behind at least one of the eight clips
        assert len(recorded & NUISANCES.keys()) >= 3, recorded
    assert build["format_version"] == FORMAT_VERSION
    check(json.loads((out / "vocab.json").read_text()), "vocab", "vocab.json")
    for line in (out / "failures.jsonl").read_text().splitlines():
        check(json.loads(line), "failure", "failures.jsonl")
    metadata = {"attributes.parquet": {b"spacy_model"}, "clip_attributes.parquet": set(),
                "cider_df.parquet": {b"n_docs", b"max_len"}}
    for name, keys in metadata.items():
        schema = pq.read_schema(out / name)
        assert [(f.name, str(f.type)) for f in schema] == \
            [(r["column"], r["arrow type"]) for r in contract()[f"parquet {name}"]], name
        assert set(schema.metadata or {}) == keys, name


def test_failed_clips_keep_the_contract(synth_small, tmp_path):
    """A shard with a clip that cannot be decoded: its stats and failure record, as failures.jsonl holds them."""
    good = {"clip_id": "clip.1", "path": str(synth_small / "videos" / "video1.mp4"), "captions": ["a b"]}
    bad = {"clip_id": "gone", "path": str(tmp_path / "gone.mp4"), "captions": ["c d"]}
    shards = tmp_path / "shards"  # a build's OUT/shards (vidcap.shards.layout)
    shards.mkdir()
    result = build_shard(ShardTask("train-000000", "train", [good, bad], 5, 32, 90, 60.0), str(shards))
    check(json.loads((shards / "train-000000_stats.json").read_text()), "stats", "stats with a failure")
    assert len(result.failures) == 1
    check(result.failures[0], "failure", "failure record")
    with tarfile.open(shards / "train-000000.tar") as tar:
        assert sorted(tar.getnames()) == [f"clip%2E1.{i}.jpg" for i in range(5)] + ["clip%2E1.json"]


@pytest.mark.parametrize("version, accepted", [("1.0", True), ("1.1", True), ("1.7", True), (None, True), ("2.0", False),
                                               ("0.9", False), ("one", False)])
def test_readers_check_the_format_version(built_small, tmp_path, version, accepted):
    out = copy_build(built_small, tmp_path / "out")
    path = out / "shards" / "manifest-train.json"
    manifest = json.loads(path.read_text())
    manifest.pop("format_version")
    if version is not None:
        manifest["format_version"] = version
    path.write_text(json.dumps(manifest))
    if accepted:
        assert DataInfo.load(out).n_frames == 5
        return
    with pytest.raises(ShardError) as e:
        DataInfo.load(out)
    assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)
    if version == "2.0":
        assert str(e.value) == (f"{path}: shard format version 2.0, but this vidcap reads version 1.x "
                                "(docs/shards.md); rebuild with this vidcap's `pipeline build`")


def test_an_unknown_major_version_is_one_line_from_every_cli(built_small, tmp_path):
    out = copy_build(built_small, tmp_path / "out")
    for path in [out / "build.json", *sorted((out / "shards").glob("manifest-*.json"))]:
        doc = json.loads(path.read_text())
        doc["format_version"] = "3.1"
        path.write_text(json.dumps(doc))
    r = subprocess.run([tool("train"), "--stage", "1", "--data", str(out), "--run", str(tmp_path / "run"),
                        "--preset", "tiny", "--quiet"], capture_output=True, text=True, timeout=300)
    assert "shard format version 3.1, but this vidcap reads version 1.x" in one_line_error(r, "train")
    r = subprocess.run([tool("pipeline"), "inspect", str(out)], capture_output=True, text=True, timeout=300)
    assert one_line_error(r, "pipeline inspect") == (f"{out / 'build.json'}: shard format version 3.1, but this vidcap reads "
                                             "version 1.x (docs/shards.md); rebuild with this vidcap's `pipeline build`")


def test_the_document_names_real_files(built_small):
    for name in ("build.json", "failures.jsonl", "vocab.json", "attributes.parquet", "clip_attributes.parquet",
                 "cider_df.parquet"):
        assert (Path(built_small) / name).exists() and f"`{name}`" in DOC.read_text()
