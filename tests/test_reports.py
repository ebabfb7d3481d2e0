"""What a person audits after a build: the summary table, the reports, the figures, the card.

One small build through the CLI on the bundled sample (six sources: dense, BM25 and label
negatives, planted contamination, duplicates), then every output is read the way a person or a
tool would read it.
"""

import base64
import dataclasses
import json
import re

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from nvdata import counts
from nvdata.cli import app
from nvdata.decontam.report import MD_TEXT_CHARS, _cell, clip
from nvdata.paths import sample_mirror_dir
from nvdata.text import normalize_text

pytestmark = pytest.mark.slow

SOURCES = {"msmarco": {"limit": 30}, "banking77": {}, "amazon_reviews": {}, "imdb": {},
           "stsbenchmark": {}, "sts22": {}}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("reports")
    recipe = root / "small.yaml"
    recipe.write_text(yaml.safe_dump({"name": "small", "stage": 2, "sources": SOURCES}))
    r = CliRunner().invoke(app, ["build", "--recipe", str(recipe), "--sample", "--out", str(root / "out"),
                                 "--cache", str(root / "cache")])
    assert r.exit_code == 0, r.output
    out = root / "out"
    return {"out": out, "output": r.output, "manifest": json.loads((out / "manifest.json").read_text())}


def _md_table_rows(text: str, first_header: str) -> dict[str, list[str]]:
    """Rows of the Markdown table whose first header cell is ``first_header``, by first cell."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def _terminal_table_rows(output: str) -> dict[str, list[str]]:
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 3 and cells[1]:
            rows[cells[1]] = cells[2:-1]
    return rows


def test_build_prints_one_table_of_named_counts_and_where_everything_is(built):
    out, output = built["out"], built["output"]
    assert f"report (figures): {(out / 'reports' / 'report.html').resolve()}" in output
    assert f"data card: {(out / 'README.md').resolve()}" in output
    # the libraries' own progress lines stay quiet; ours remain
    assert "Generating" not in output and "Loading weights" not in output
    assert "decontaminate msmarco: dropped" in output


def test_per_source_counts_are_equal_in_summary_manifest_reports_card_and_shards(built):
    out, manifest = built["out"], built["manifest"]
    sources = manifest["sources"]
    keys = [c.key for c in counts.COLUMNS]
    expected = {name: [counts.cell(k, s[k]) for k in keys] for name, s in sources.items()}
    assert set(sources) == set(SOURCES)

    # the terminal summary
    terminal = _terminal_table_rows(built["output"])
    assert {n: terminal[n] for n in sources} == expected
    # the data card and report.html
    card = _md_table_rows((out / "README.md").read_text(), "source | raw rows")
    assert {n: card[n] for n in sources} == expected
    html = (out / "reports" / "report.html").read_text()
    for name, cells in expected.items():
        assert f"<td>{name}</td>" + "".join(f'<td class="n">{c}</td>' for c in cells) in html
    # the decontamination report, JSON and Markdown
    doc = json.loads((out / "reports" / "decontamination.json").read_text())
    md = _md_table_rows((out / "reports" / "decontamination.md").read_text(), "source | raw rows")
    for name, s in sources.items():
        for k in counts.DECONTAMINATION_KEYS:
            assert doc["sources"][name][k] == s[k], (name, k)
        assert md[name][: len(counts.DECONTAMINATION_KEYS)] == [counts.cell(k, s[k]) for k in counts.DECONTAMINATION_KEYS]
    # ... and the counts are the data: rows out per source are the shards' rows
    shards = pq.read_table(out / "shards", columns=["source"]).column("source").to_pylist()
    assert {n: shards.count(n) for n in sources} == {n: s["rows"] for n, s in sources.items()}
    # the cases the issue names: corpus documents apart from pairs, duplicates named
    assert sources["msmarco"]["documents_dropped_decontamination"] > 0
    assert sources["msmarco"]["corpus_documents"] > sources["msmarco"]["raw_rows"]
    ar = sources["amazon_reviews"]
    assert ar["duplicates_merged"] > 0 and ar["raw_rows"] - ar["rows"] == ar["duplicates_merged"] + ar["dropped_format"]
    assert manifest["decontamination"]["dropped_decontamination"] == sum(s["dropped_decontamination"] for s in sources.values())


def test_decontamination_report_shows_every_dropped_row_beside_the_test_text(built):
    out = built["out"]
    doc = json.loads((out / "reports" / "decontamination.json").read_text())
    md = (out / "reports" / "decontamination.md").read_text()
    hits = doc["hits"]
    assert hits and all(h["text"] and h["test_text"] for h in hits)
    dropped = {}
    for h in hits:
        # the whole texts, and the evidence holds on them
        if h["method"] == "exact":
            assert normalize_text(h["text"]) == normalize_text(h["test_text"])
        if h["method"] == "ngram":
            assert h["evidence"]["ngram"] in normalize_text(h["text"]) and h["evidence"]["ngram"] in normalize_text(h["test_text"])
        dropped.setdefault(h["source"], set()).add((h["table"], h["row_id"]))
    # every dropped row is one the counts name, and it is in the .md with both texts on its line
    for name, s in built["manifest"]["sources"].items():
        assert len(dropped.get(name, ())) == s["dropped_decontamination"] + s["documents_dropped_decontamination"]
    lines = md.splitlines()
    for h in hits:
        line = next((x for x in lines if x.startswith(f"| {h['source']}/{h['table']} {h['row_id']} | {h['field']} |")
                     and f"{h['test_item_id']}:{h['test_field']}" in x), None)
        assert line is not None, h
        assert _cell(clip(h["text"])) in line and _cell(clip(h["test_text"])) in line and h["method"] in line
    # grouped by test set
    for h in hits:
        assert f"### {h['test_set']} (" in md
    assert f"clipped at {MD_TEXT_CHARS} characters" in md
    # the planted contamination of the sample mirror shows with the test text it copies
    plants = json.loads((sample_mirror_dir() / "PLANTS.json").read_text())
    shown = [p for p in plants if p["source"] in SOURCES and p["source"] != "msmarco"]
    assert len(shown) >= 4
    for p in shown:
        h = next(h for h in hits if h["source"] == p["source"] and h["row_id"] == str(p["row_index"])
                 and h["test_set"] == p["test_task"])
        assert h["text"] == p["text"] and h["test_text"] == p["test_text"]
        assert _cell(clip(p["text"])) in md and _cell(clip(p["test_text"])) in md


def test_data_card_loads_with_huggingface_hub_and_names_the_miner(built):
    from huggingface_hub import DatasetCard

    from nvdata.registry import load_registry

    out, manifest = built["out"], built["manifest"]
    card = DatasetCard.load(out / "README.md")
    data = card.data.to_dict()
    reg = load_registry()
    assert data["license"] == "other" and data["license_name"]
    assert data["source_licences"] == {n: reg[n].licence for n in SOURCES}
    assert data["source_datasets"] == sorted({reg[n].hf_id for n in SOURCES})
    assert data["configs"][0]["data_files"][0]["path"] == "shards/*.parquet"
    assert "text-retrieval" in data["task_categories"] and data["size_categories"] == ["n<1K"]
    assert manifest["encoder"] == "sentence-transformers/all-MiniLM-L6-v2 (bundled)"
    assert data["nvdata"]["encoder"] == manifest["encoder"]
    assert data["nvdata"]["decontamination"]["ngram_n"] == 13
    assert "sentence-transformers/all-MiniLM-L6-v2 (bundled)" in card.text
    assert "reports/report.html" in card.text and "13-gram overlap" in card.text


def test_card_metadata_survives_any_licence_text(built, tmp_path):
    """Licence strings with quotes, brackets and colons were templated into broken YAML."""
    from huggingface_hub import DatasetCard

    from nvdata.card import write_data_card
    from nvdata.registry import load_registry

    reg = load_registry()
    nasty = 'CC BY-SA "4.0": [see] {terms} | #1'
    reg["banking77"] = dataclasses.replace(reg["banking77"], licence=nasty)
    path = write_data_card(tmp_path / "README.md", built["manifest"], reg, {})
    assert DatasetCard.load(path).data.to_dict()["source_licences"]["banking77"] == nasty


def test_report_html_embeds_its_figures_and_needs_no_network(built):
    reports = built["out"] / "reports"
    html = (reports / "report.html").read_text()
    images = re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', html)
    mined = [n for n, s in built["manifest"]["sources"].items() if s["task_type"] in ("retrieval", "sts")]
    assert len(images) == len(mined) + 2  # scores per mined source, negatives per row, decontamination
    for b64 in images:
        assert base64.b64decode(b64).startswith(b"\x89PNG\r\n\x1a\n")
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', html)
    assert "<script" not in html and "<link" not in html
    for name in mined:
        assert (reports / "figures" / f"scores-{name}.png").is_file()
    assert (reports / "figures" / "negatives-per-row.png").is_file()
    assert (reports / "figures" / "decontamination-by-test-set.png").is_file()


def test_mining_report_has_one_score_schema_and_histograms_add_up(built):
    mining = json.loads((built["out"] / "reports" / "mining.json").read_text())
    quantile_keys = {"count", "mean", "min", "p05", "p25", "p50", "p75", "p95", "max"}
    dense = mining["msmarco"]
    bm25 = mining["stsbenchmark"]["sources"]["stsbenchmark"]
    for rep in (dense, bm25):
        for what in ("positive", "negative", "margin"):
            assert set(rep["scores"][what]) == quantile_keys, what
        h = rep["score_histograms"]
        assert len(h["positive"]) == len(h["negative"]) == h["bins"]
        assert sum(h["positive"]) == rep["scores"]["positive"]["count"]
        assert sum(h["negative"]) == rep["scores"]["negative"]["count"]
    # every candidate a filter removed is in that filter's histogram, and only those
    assert dense["removed"]["relative_margin"] > 0
    for name, n in dense["removed"].items():
        assert sum(dense["score_histograms"]["removed"].get(name, [0])) == n, name


def test_every_markdown_table_row_has_as_many_cells_as_its_header(built):
    """A row with one cell more than its header loses that cell when rendered (it did: shared_corpus)."""
    mds = list((built["out"] / "reports").glob("*.md"))
    assert mds
    for md in mds:
        header = None
        for line in md.read_text(encoding="utf-8").splitlines():
            if not line.startswith("|"):
                header = None
                continue
            cells = len(re.findall(r"(?<!\\)\|", line)) - 1
            if header is None:
                header = cells
            assert cells == header, f"{md.name}: {line[:120]}"


def test_the_decontamination_summary_does_not_depend_on_the_order_hits_arrive_in():
    """On Ray, hits arrive in the order workers finish: every listing must be in key order."""
    from nvdata.decontam.report import summarize

    hits = [{"source": src, "table": "pairs", "row_id": f"{src}-{i}", "action": "drop_row", "field": "query",
             "method": "exact", "test_set": task}
            for task in ("FEVER", "ArguAna", "NQ") for src in ("msmarco", "fever", "hotpotqa") for i in range(2)]
    counts = {src: {"pairs": {"checked": 10, "kept": 4, "dropped": 6, "texts": 10}} for src in ("msmarco", "fever", "hotpotqa")}
    one = json.dumps(summarize(hits, counts))
    assert json.dumps(summarize(hits[::-1], counts)) == one
    assert list(json.loads(one)["test_sets"]) == ["ArguAna", "FEVER", "NQ"]
    assert list(json.loads(one)["test_sets"]["FEVER"]["sources"]) == ["fever", "hotpotqa", "msmarco"]
