"""The artifact conventions: strict keys, the one format rule, provenance, fingerprints, pairing checks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgequery.artifacts import (BenchmarkResult, Fingerprint, GalleryRef, Provenance, check_compatible,
                                 write_result)
from edgequery.artifacts.base import Artifact
from edgequery.errors import EdgeQueryError
from edgequery.spaces import get_space


class Toy(Artifact):
    FORMAT = "edgequery-toy"
    VERSION = 2
    KIND = "toy file"
    n: int

    @classmethod
    def migrate(cls, data, version):
        if version == 1:  # v1 called the field "count"
            data["n"] = data.pop("count")
            data["format_version"] = 2
            return data
        return None


def test_format_rule_and_strict_keys(tmp_path):
    path = Toy(n=3).save(tmp_path / "toy.json")
    assert json.loads(path.read_text()) == {"format": "edgequery-toy", "format_version": 2, "n": 3}
    assert Toy.load(path).n == 3
    with pytest.raises(EdgeQueryError, match="invented: unknown key"):
        Toy.parse_data({"format": "edgequery-toy", "format_version": 2, "n": 3, "invented": 1}, "t.json")
    with pytest.raises(EdgeQueryError, match="newer than this edgequery reads .2.*upgrade"):
        Toy.parse_data({"format": "edgequery-toy", "format_version": 3, "n": 3}, "t.json")
    with pytest.raises(EdgeQueryError, match="not an edgequery toy file"):
        Toy.parse_data({"format": "edgequery-lut", "format_version": 2, "n": 3}, "t.json")
    with pytest.raises(EdgeQueryError, match="no integer format_version"):
        Toy.parse_data({"format": "edgequery-toy", "format_version": "2", "n": 3}, "t.json")
    assert Toy.parse_data({"format": "edgequery-toy", "format_version": 1, "count": 5}, "old.json").n == 5
    with pytest.raises(EdgeQueryError, match="older than this edgequery reads .* no upgrade path"):
        Toy.parse_data({"format": "edgequery-toy", "format_version": 0, "n": 1}, "t.json")
    with pytest.raises(EdgeQueryError, match="n: Input should be a valid integer"):
        Toy.parse_data({"format": "edgequery-toy", "format_version": 2, "n": "many"}, "t.json")


def test_bad_json_files_are_refused_clearly(tmp_path):
    with pytest.raises(EdgeQueryError, match="does not exist"):
        Toy.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(EdgeQueryError, match="is not valid JSON"):
        Toy.load(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(EdgeQueryError, match="not a JSON object"):
        Toy.load(tmp_path / "list.json")


def test_provenance_envelope_is_complete(tmp_path):
    prov = Provenance.start({"epochs": 2, "out": tmp_path, "sizes": (1, 2)}, command="python benchmarks/x.py --q")
    path = write_result(tmp_path / "r.json", "x", {"acc": 0.5}, prov, notes=["from a flag", ""])
    res = BenchmarkResult.load(path)
    p = res.provenance
    assert res.benchmark == "x" and res.results == {"acc": 0.5} and res.notes == ["from a flag"]
    assert p.command == "python benchmarks/x.py --q"
    assert p.config == {"epochs": 2, "out": str(tmp_path), "sizes": [1, 2]}
    assert p.git_commit and len(p.git_commit) == 40 and isinstance(p.git_dirty, bool)
    assert p.machine.cpu and p.machine.cores and p.machine.torch
    assert p.seconds is not None and p.finished_at and len(p.load_average.start) == 3
    data = json.loads(path.read_text())
    data["provenance"]["typed_by_hand"] = "x"
    with pytest.raises(EdgeQueryError, match="provenance.typed_by_hand: unknown key"):
        BenchmarkResult.parse_data(data, "r.json")


def test_a_rerun_writing_its_results_does_not_make_the_code_dirty(tmp_path):
    from edgequery.artifacts.provenance import git_state

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                       capture_output=True)

    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "benchmarks" / "results" / "r.json").write_text("{}")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "c")
    assert git_state(tmp_path)[1] is False
    (tmp_path / "benchmarks" / "results" / "r.json").write_text('{"a": 1}')  # what the previous script wrote
    commit, dirty = git_state(tmp_path)
    assert len(commit) == 40 and dirty is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_state(tmp_path)[1] is True


def test_fingerprint_of_this_machine():
    fp = Fingerprint.local("onnxruntime", 1)
    assert fp.cpu and fp.cores and fp.kernel and fp.runtime_version.startswith("onnxruntime ")
    assert fp.differences(fp) == []
    other = fp.model_copy(update={"isa": fp.isa + ["sve2"], "threads": 4})
    assert [d.split(":")[0] for d in fp.differences(other)] == ["isa", "threads"]
    # the agent (run as a plain script, as on a board) reports the same identity
    out = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, 'edgequery/runtimes'); "
                          "import agent, json; print(json.dumps(agent.fingerprint('onnxruntime', 1)))"],
                         capture_output=True, text=True, check=True, cwd=__import__("pathlib").Path(__file__).parents[1])
    assert Fingerprint.model_validate_json(out.stdout).differences(fp) == []


GALLERY = {"kind": "gallery", "model": {"arch": "resnet101", "embed_dim": 128}, "model_version": "g" * 16}


def query(compat, dim=128):
    return {"kind": "query", "model": {"arch": "mobilenet_v3_small", "embed_dim": dim}, "model_version": "q" * 16,
            "compatible_with": None if compat is None else {"gallery_version": compat}}


def test_query_and_gallery_pairing():
    assert check_compatible(query("g" * 16), GALLERY) == []
    assert check_compatible(GALLERY, query(None)) == []           # eval of a no-BCT net is allowed
    with pytest.raises(EdgeQueryError, match="records no gallery model"):
        check_compatible(query(None), GALLERY, require_bct=True)
    with pytest.raises(EdgeQueryError, match="q.pt is compatible with gallery model_version x+, but g.pt"):
        check_compatible(query("x" * 16), GALLERY, a_name="q.pt", b_name="g.pt")
    with pytest.raises(EdgeQueryError, match="embeds to 64 dims"):
        check_compatible(query("g" * 16, dim=64), GALLERY)
    index = GalleryRef(model_version="g" * 16, embed_dim=128)
    assert check_compatible(GALLERY, index) == []
    with pytest.raises(EdgeQueryError, match="rebuild the index"):
        check_compatible(GALLERY, GalleryRef(model_version="h" * 16, embed_dim=128))


class _Lut:
    def __init__(self, space, fingerprint):
        self.space, self.space_config, self.blocks, self.fingerprint = space.name, space.config(), {}, fingerprint


def test_lut_pairing_with_space_and_device():
    space = get_space("mbv3")
    here = Fingerprint.local("onnxruntime", 1)
    lut = _Lut(space, here)
    assert check_compatible(lut, space) == [] and check_compatible(lut, here) == []
    assert check_compatible(lut, get_space("mbv3", resolutions=[224])) == []   # resolutions are checked apart
    with pytest.raises(EdgeQueryError, match="another mbv3 space .widths"):
        check_compatible(lut, get_space("mbv3", widths=[1.0]))
    with pytest.raises(EdgeQueryError, match="search space 'mbv3', not 'shufflenet'"):
        check_compatible(lut, get_space("shufflenet"))
    other = _Lut(space, here.model_copy(update={"cpu": "Cortex-A76"}))
    with pytest.raises(EdgeQueryError, match="another device than this one: cpu: 'Cortex-A76'.*--allow-other-device"):
        check_compatible(other, here, a_name="lut.json")
    notes = check_compatible(other, here, allow_other_device=True)
    assert len(notes) == 1 and "Cortex-A76" in notes[0]
    with pytest.raises(EdgeQueryError, match="records no device fingerprint"):
        check_compatible(_Lut(space, None), here)
    with pytest.raises(TypeError, match="no rule"):
        check_compatible(lut, GALLERY)


def test_progress_logs_lines_when_not_a_terminal(edgequery_log):
    from edgequery.log import progress

    for _ in progress(range(5), desc="steps", unit="step", interval=0):
        pass
    lines = [r.getMessage() for r in edgequery_log.records]
    assert lines and "steps" in lines[-1] and "5/5" in lines[-1]


def test_nested_progress_in_a_log_carries_no_cursor_codes(edgequery_log):
    from edgequery.log import progress

    for _ in progress(range(2), desc="chunks", interval=0):
        for _ in progress(range(3), desc="batches", interval=0):
            pass
    lines = [r.getMessage() for r in edgequery_log.records]
    assert any("chunks" in line for line in lines) and any("batches" in line for line in lines)
    assert not any("\x1b" in line for line in lines), lines
