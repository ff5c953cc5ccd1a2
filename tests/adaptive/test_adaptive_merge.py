"""merge_reports (vaegan.adaptive.merge) and the CLI's --merge: runs split by attack, eps, device and image count."""

import json

import pytest
import torch
from click.testing import CliRunner

from vaegan.adaptive.cli import adaptive_cli
from vaegan.adaptive.merge import merge_reports
from vaegan.adaptive.report import pack_mask, unpack_mask, write_adaptive
from vaegan.train.errors import VaeganError


def _report(attacks: dict, eps, any_=None, n=8, ck="a", purify_steps=3):
    return {"n": n, "eps": eps, "clean": {"classifier": 90.0, "defended": 80.0},
            "config": {"purify": {"steps": purify_steps}, "steps": 5, "alpha_ratio": 0.1, "restarts": 1, "loss": "ce",
                       "eot_samples": 2, "square_queries": 3},
            "attacks": attacks, "any": any_ or {}, "checkpoints": {"vaegan": ck, "classifier": ck}, "threads": 1,
            "oblivious": None}


def test_merge_joins_runs_split_by_eps_and_attack(tmp_path):
    a = _report({"full": {"0.1": {"accuracy": 60.0, "curve": {"5": 60.0}}}}, [0.1], {"0.1": 55.0})
    b = _report({"apgd": {"0.1": {"accuracy": 58.0, "gradient": "full"}, "0.3": {"accuracy": 5.0, "gradient": "full"}}},
                [0.1, 0.3], {"0.1": 58.0, "0.3": 5.0})
    c = _report({"transfer": {"0.3": {"accuracy": 70.0, "undefended_accuracy": 20.0}}}, [0.3])
    c["surrogate"] = {"path": "surrogate.pt", "sha256": "s", "clean_accuracy": 85.0}
    for name, rep in zip("abc", (a, b, c)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adaptive.json").write_text(json.dumps(rep))
    out = tmp_path / "merged"
    r = CliRunner().invoke(adaptive_cli, ["--merge", str(tmp_path / "a"), "--merge", str(tmp_path / "b"),
                                          "--merge", str(tmp_path / "c"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "adaptive.json").read_text())
    assert m["eps"] == [0.1, 0.3] and list(m["attacks"]) == ["full", "apgd", "transfer"]
    # the worst-case row: lowest over the attacks and over each run's own per-image worst case
    assert m["any"] == {"0.1": 55.0, "0.3": 5.0} and m["any_kind"] == "min" and m["merged_from"] == 3
    md = (out / "adaptive.md").read_text()
    assert "lowest over the attacks above (merged runs" in md and "| full-gradient PGD (unrolled T steps) | 60.00 | – |" in md
    # runs that do not describe the same experiment are refused, naming the difference and the reports
    with pytest.raises(VaeganError, match="report 1 and report 2 differ in checkpoints"):
        merge_reports([a, _report({}, [0.1], ck="b")])
    with pytest.raises(VaeganError, match="merge: x.json and y.json were measured with different purifier settings"):
        merge_reports([a, _report({}, [0.1], purify_steps=0)], names=["x.json", "y.json"])
    with pytest.raises(VaeganError, match=r"full at eps 0.1 with the same budget \(5 steps\) on the same device is in "
                                          r"more than one report \(report 1 and report 3\)"):
        merge_reports([a, _report({}, [0.3]), a])
    # the same budget on another device is a second measurement (CPU and GPU arithmetic differ): both are kept
    # and told apart by their device; the per-image worst case takes both masks
    cpu = _report({"full": {"0.1": {"accuracy": 62.5, "device": "cpu", "curve": {"5": 62.5},
                                    "fooled": pack_mask(torch.tensor([1, 1, 1, 0, 0, 0, 0, 0], dtype=torch.bool))}}},
                  [0.1])
    gpu = _report({"full": {"0.1": {"accuracy": 62.5, "device": "cuda (H200)", "curve": {"5": 62.5},
                                    "fooled": pack_mask(torch.tensor([0, 1, 1, 1, 0, 0, 0, 0], dtype=torch.bool))}}},
                  [0.1])
    both = merge_reports([cpu, gpu])
    assert [r["device"] for r in both["attacks"]["full"]["0.1"]["runs"]] == ["cpu", "cuda (H200)"]
    assert both["any"]["0.1"] == 50.0 and both["any_kind"] == "union"
    write_adaptive(both, tmp_path / "both")
    md_both = (tmp_path / "both" / "adaptive.md").read_text()
    assert "full eps 0.1: 5 steps on cpu 62.50, 5 steps on cuda (H200) 62.50" in md_both
    assert "| full (5 steps on cuda (H200)) | 0.1 | 62.50 |" in md_both
    # the same attack with another budget: the stronger run is reported, both are listed with their budgets
    longer = _report({"full": {"0.1": {"accuracy": 52.0, "curve": {"5": 60.0, "20": 52.0},
                                       "budget": {"steps": 20, "restarts": 1}}}}, [0.1])
    m2 = merge_reports([a, longer])
    rec = m2["attacks"]["full"]["0.1"]
    assert rec["accuracy"] == 52.0 and [r["budget"]["steps"] for r in rec["runs"]] == [5, 20]
    assert m2["any"]["0.1"] == 52.0
    m3 = merge_reports([longer, a])  # order does not matter: the lower accuracy wins
    assert m3["attacks"]["full"]["0.1"]["accuracy"] == 52.0 and len(m3["attacks"]["full"]["0.1"]["runs"]) == 2
    write_adaptive(m2, tmp_path / "m2")
    md2 = (tmp_path / "m2" / "adaptive.md").read_text()
    assert "| full (20 steps) | 0.1 | 60.00 | 52.00 |" in md2
    assert "full eps 0.1: 5 steps 60.00, 20 steps 52.00" in md2
    # a run on another device and with the randomized purifier's clean accuracy: both survive the merge, eps sorted
    gpu = _report({"bpda_eot": {"0.3": {"accuracy": 40.0, "device": "cuda (H200)", "defense": "R=2",
                                        "budget": {"steps": 5}},
                               "0.1": {"accuracy": 70.0, "device": "cuda (H200)", "defense": "R=2",
                                       "budget": {"steps": 5}}}}, [0.3, 0.1])
    gpu["clean"]["defended_randomized"] = 77.0
    m4 = merge_reports([a, gpu])
    assert m4["clean"] == {"classifier": 90.0, "defended": 80.0, "defended_randomized": 77.0}
    assert list(m4["attacks"]["bpda_eot"]) == ["0.1", "0.3"] and m4["eps"] == [0.1, 0.3]
    write_adaptive(m4, tmp_path / "m4")
    md4 = (tmp_path / "m4" / "adaptive.md").read_text()
    assert "randomized purifier 77.00%" in md4
    assert "device of each result in the table: cuda (H200): bpda_eot (eps 0.1, 0.3); cpu: full (eps 0.1)" in md4
    # per-image outcomes recorded: the worst-case row is their union across runs; without them, the lowest
    f1 = torch.tensor([1, 1, 0, 0, 0, 0, 0, 0], dtype=torch.bool)
    f2 = torch.tensor([0, 1, 1, 0, 0, 0, 0, 0], dtype=torch.bool)
    assert (unpack_mask(pack_mask(f1), 8) == f1.numpy()).all()
    u1 = _report({"full": {"0.1": {"accuracy": 75.0, "fooled": pack_mask(f1), "budget": {"steps": 5}}}}, [0.1])
    u2 = _report({"apgd": {"0.1": {"accuracy": 75.0, "fooled": pack_mask(f2), "gradient": "full",
                                   "budget": {"steps": 7}}}}, [0.1])
    m5 = merge_reports([u1, u2])
    assert m5["any"] == {"0.1": 62.5} and m5["any_kind"] == "union"
    write_adaptive(m5, tmp_path / "m5")
    assert "| **worst case over the attacks above and their runs (per image)** | **62.50** |" in (
        tmp_path / "m5" / "adaptive.md").read_text()
    m6 = merge_reports([u1, u2, b])  # b recorded no masks: its apgd 58.0 at eps 0.1 is lower than the union
    assert m6["any"]["0.1"] == 58.0 and m6["any_kind"] == "union+min"
    r2 = CliRunner().invoke(adaptive_cli, ["--merge", str(tmp_path / "missing"), "--out", str(out)])
    assert r2.exit_code == 2 and "missing/adaptive.json: not a readable adaptive report" in r2.output
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "adaptive.json").write_text(json.dumps({"n": 8, "table": {}}))
    r3 = CliRunner().invoke(adaptive_cli, ["--merge", str(tmp_path / "other"), "--out", str(out)])
    assert r3.exit_code == 2 and "other/adaptive.json: not an adaptive report (no eps, clean, attacks" in r3.output


def test_merge_cuts_runs_over_more_images_to_the_common_first_images(tmp_path):
    # a 4-image run and an 8-image run over the first test images: merged over the first 4, the larger run's
    # results recomputed from their per-image masks
    small = _report({"apgd": {"0.1": {"accuracy": 75.0, "gradient": "full", "budget": {"steps": 7},
                                      "fooled": pack_mask(torch.tensor([0, 0, 1, 0], dtype=torch.bool))}}},
                    [0.1], {"0.1": 75.0}, n=4)
    small["clean"] = {"classifier": 100.0, "defended": 75.0}
    big = _report({"square": {"0.1": {"accuracy": 62.5, "budget": {"queries": 3}, "curve": {"3": 62.5},
                                      "fooled": pack_mask(torch.tensor([1, 0, 0, 0, 1, 1, 0, 0], dtype=torch.bool))}}},
                  [0.1], {"0.1": 62.5}, n=8)
    big["attacks"]["square"]["0.1"]["torch_reference_accuracy"] = 62.5  # over its 8 images: not kept
    big["runtime"] = {"backend": "fused", "clean_accuracy": 87.5}
    for order in ([small, big], [big, small]):
        m = merge_reports(order)
        assert m["n"] == 4 and m["clean"] == {"classifier": 100.0, "defended": 75.0}
        sq = m["attacks"]["square"]["0.1"]
        assert sq["accuracy"] == 75.0 and sq["cut_from"] == 8 and "curve" not in sq
        assert (unpack_mask(sq["fooled"], 4) == [True, False, False, False]).all()
        assert m["attacks"]["apgd"]["0.1"]["accuracy"] == 75.0 and "cut_from" not in m["attacks"]["apgd"]["0.1"]
        assert m["any"] == {"0.1": 50.0} and m["any_kind"] == "union"  # images 0 and 2; big's own 62.5 is not used
    write_adaptive(m, tmp_path / "m")
    md = (tmp_path / "m" / "adaptive.md").read_text()
    assert "first 4 test images" in md and "Cut to these 4 images from runs over more" in md
    assert "square eps 0.1 (8 images)" in md
    assert ("square queried the runtime (fused backend); torch reference accuracy on its outputs: not kept "
            "(results cut from runs over more images)") in md
    for name, rep in (("small", small), ("big", big)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adaptive.json").write_text(json.dumps(rep))
    r = CliRunner().invoke(adaptive_cli, ["--merge", str(tmp_path / "big"), "--merge", str(tmp_path / "small"),
                                          "--out", str(tmp_path / "cli")])
    assert r.exit_code == 0 and "merged 2 reports over the first 4 images (runs over 8 cut to them)" in r.output
    # a larger run without per-image outcomes cannot be cut: refused, naming the result
    old = _report({"full": {"0.1": {"accuracy": 60.0}}}, [0.1], n=8)
    with pytest.raises(VaeganError, match=r"full at eps 0.1 over 8 images recorded no per-image outcomes"):
        merge_reports([small, old])
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "adaptive.json").write_text(json.dumps(old))
    r = CliRunner().invoke(adaptive_cli, ["--merge", str(tmp_path / "small"), "--merge", str(tmp_path / "old"),
                                          "--out", str(tmp_path / "refused")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert f"merge: {tmp_path / 'old' / 'adaptive.json'}: full at eps 0.1 over 8 images recorded no per-image" in r.output
    assert merge_reports([old, old | {"attacks": {}}])["n"] == 8  # same n: nothing is cut, masks not needed
