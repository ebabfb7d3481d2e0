"""The bundled sample mirror is what the generator writes, small, and loadable as Hub repos."""

import json

import pyarrow.parquet as pq

from nvdata.paths import sample_mirror_dir
from nvdata.samplegen import write_sample_mirror


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_bundled_mirror_is_up_to_date_with_its_generator(tmp_path):
    fresh = write_sample_mirror(tmp_path / "m")
    bundled = sample_mirror_dir()
    assert _files(fresh) == _files(bundled)
    for rel in _files(fresh):
        a, b = fresh / rel, bundled / rel
        if rel.endswith(".parquet"):
            assert pq.read_table(a).equals(pq.read_table(b)), rel
        else:
            assert a.read_text() == b.read_text(), rel


def test_bundled_mirror_is_small_and_covers_every_available_source(registry):
    root = sample_mirror_dir()
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert size < 5 * 1024 * 1024
    for e in registry.values():
        if e.available:
            assert (root / e.hf_id / "README.md").is_file(), e.name
        else:  # no public training copy to imitate (the repo may still hold an MTEB test set)
            assert not list((root / e.hf_id).glob(f"data/*/{e.split}-*.parquet")), e.name
    plants = json.loads((root / "PLANTS.json").read_text())
    assert {p["kind"] for p in plants} >= {"exact", "variant", "ngram13", "paraphrase"}
