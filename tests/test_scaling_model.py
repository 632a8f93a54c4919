"""benchmarks/scaling_model.py: the ring all-reduce term, the step model's overlap and walls, and AlexNet's bytes."""
import pytest

from benchmarks import scaling_model as sm


def setup(**kw):
    base = dict(replicas=8, batch=128, replica_img_s=6400, gpus_per_replica=2, link_GBps=12.5, link_name="100 Gb/s",
                latency_s=0.0)
    return sm.Setup(**{**base, **kw})


def test_alexnet_gradients_are_244_mb():
    assert sm.gradient_params() == 60_965_224  # 58.6M of them in fc6-fc8


def test_ring_allreduce_sends_2_n_minus_1_over_n_of_the_bytes():
    assert sm.allreduce_s(1, 1e9, 10) == 0
    assert sm.allreduce_s(2, 1e9, 10) == pytest.approx(0.1)  # 2(N-1)/N = 1
    assert sm.allreduce_s(64, 1e9, 10) == pytest.approx(2 * 63 / 64 * 0.1)
    assert sm.allreduce_s(4, 1e9, 10, latency_s=1e-3, buckets=6) == pytest.approx(6 * 6 * 1e-3 + 1.5 * 0.1)


def test_overlap_hides_at_most_the_backward():
    params = 1_000_000_000 // 4  # 1 GB of fp32 gradients: 2 x 7/8 x 1 GB / 12.5 GB/s = 0.14 s of all-reduce
    compute = 128 / 6400
    none = sm.project(setup(overlap=0.0), params)
    full = sm.project(setup(overlap=1.0), params)
    assert none.step_s == pytest.approx(compute + 0.14)
    assert full.step_s == pytest.approx(compute + 0.14 - 2 / 3 * compute)  # the all-reduce outlasts backward
    assert "all-reduce over 100 Gb/s" in full.wall
    small = sm.project(setup(overlap=1.0), 1000)
    assert small.step_s == pytest.approx(compute) and small.wall.startswith("compute")


def test_compression_halves_the_bytes_and_the_batch_wall_is_named():
    params = sm.gradient_params()
    fp32 = sm.project(setup(replicas=64, overlap=0.0), params)
    bf16 = sm.project(setup(replicas=64, overlap=0.0, compression="bf16"), params)
    assert bf16.allreduce_s == pytest.approx(fp32.allreduce_s / 2)
    assert "8192 > 1K: needs LARS" in fp32.wall
    assert "beyond AlexNet with LARS" in sm.project(setup(replicas=128), params).wall


def test_hours_and_gpu_hours_of_90_epochs():
    one = sm.project(setup(replicas=1, replica_img_s=sm.EPOCHS * sm.IMAGENET_TRAIN / 3600), 1000)
    assert one.hours == pytest.approx(1.0) and one.gpu_hours == pytest.approx(2.0)
