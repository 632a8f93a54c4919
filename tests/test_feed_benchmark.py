"""benchmarks/feed.py runs and reports its fields: the loader alone, the step alone and fed, per epoch length, with
the per-epoch pipeline costs apart. Its ratio is a benchmark's result, not checked here (a shared CI box is no
measure of overlap)."""
import json

from benchmarks import feed


def test_feed_benchmark_reports_every_part_for_both_epoch_lengths(demo_shards, tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # the long epoch's linked copy goes here
    out = tmp_path / "feed.json"
    result = feed.main(["--data", str(demo_shards), "-b", "8", "--crop", "32", "--link-copies", "2", "--threads", "1",
                        "--rounds", "2", "--json", str(out)])
    assert json.loads(out.read_text()) == result
    short, long = result["runs"]
    assert (short["name"], long["name"]) == ("short", "long")
    assert long["steps_per_epoch"] == 2 * short["steps_per_epoch"] == 2 * (120 // 8)
    for r in (short, long):
        for part in ("loader", "step", "fed"):
            assert r[part]["img_s"] > 0 and r[part]["batches"] == 2 * r["steps_per_epoch"] - 1
        assert set(r["fed"]["per_epoch"]) == {"build_s", "first_batch_s", "wait_s", "drop_s"}
        assert all(v >= 0 for v in r["fed"]["per_epoch"].values()) and r["loader"]["first_epoch"]["build_s"] > 0
        assert r["step_ms"] > 0 and r["step_over_loader_batch"] == 1.0 and r["fed_over_min"] > 0
        assert len(r["fed_over_min_per_round"]) == 2 and r["fed_over_min"] == min(r["fed_over_min_per_round"])
    assert result["device"] == "cpu" and result["batch"] == 8 and len(result["load_before"]) == 3
