"""The global sampler: one permutation per epoch, same samples at any world size, exact resume."""

import pytest

from trainer.data.sampler import GlobalBatchSampler, epoch_permutation, eval_shards


def steps(n, B, A, W, seed=0, epoch=0, start=0):
    """Per global step, the set of indices all ranks read."""
    per_rank = []
    for r in range(W):
        s = GlobalBatchSampler(n, B, A, r, W, seed)
        s.set_position(epoch, start)
        per_rank.append([mb.tolist() for mb in s])
    out = []
    for i in range(len(per_rank[0]) // A):
        out.append(sorted(x for r in range(W) for mb in per_rank[r][i * A : (i + 1) * A] for x in mb))
    return out


@pytest.mark.parametrize("W,A", [(1, 1), (2, 1), (4, 1), (2, 2), (1, 4)])
def test_same_samples_per_step_at_any_world_size(W, A):
    assert steps(100, 16, A, W) == steps(100, 16, 1, 1)


def test_epoch_covers_dataset_once_and_drops_partial_batch():
    seen = [x for st in steps(100, 16, 1, 2) for x in st]
    assert len(seen) == len(set(seen)) == 96  # 100 // 16 = 6 full steps; 4 samples dropped this epoch


def test_permutation_changes_per_epoch_and_is_deterministic():
    a, b = epoch_permutation(50, 0, 0), epoch_permutation(50, 0, 1)
    assert not a.equal(b) and a.equal(epoch_permutation(50, 0, 0))


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2)])
def test_resume_on_other_world_size_sees_remaining_samples_once(before, after):
    first = steps(96, 16, 1, before)[:2]
    rest = steps(96, 16, 1, after, start=32)
    seen = sorted(x for st in first + rest for x in st)
    assert seen == list(range(96))


def test_micro_batch_size_and_errors():
    s = GlobalBatchSampler(64, 16, 2, 1, 2, 0)
    assert s.micro == 4 and len(list(s)) == 8 and all(len(mb) == 4 for mb in s)
    with pytest.raises(ValueError):
        GlobalBatchSampler(64, 10, 1, 0, 4, 0)
    with pytest.raises(ValueError):
        s.set_position(0, 5)


@pytest.mark.parametrize("n,bs,W", [(10, 4, 1), (10, 4, 2), (7, 8, 4), (1, 2, 2)])
def test_eval_shards_cover_once_with_equal_counts(n, bs, W):
    shards = [eval_shards(n, bs, r, W) for r in range(W)]
    assert len({len(s) for s in shards}) == 1
    seen = [i for s in shards for idx, valid in s for i in idx[:valid]]
    assert sorted(seen) == list(range(n))
