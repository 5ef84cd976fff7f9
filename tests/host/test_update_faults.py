"""Power cuts and torn writes during updates (a reduced slice of `make soak`'s
update campaign, tools/ictl/measure/soak_update.py): every boot runs a verified image,
nothing raises, and the update completes once power stays on."""
import pytest

from ictl.measure import soak_update

pytestmark = pytest.mark.timeout(300)


def test_cut_and_tear_before_every_other_flash_op_of_a_full_update(tmp_path):
    n, failures, ops = soak_update.sweep_campaign(str(tmp_path), "full", stride=2, tear_bytes=(5,))
    assert ops["full"] > 40  # download, apply, checkpoints, switch, state and events all counted
    assert n == 2 * len(range(1, ops["full"] + 1, 2))
    assert failures == []


def test_five_consecutive_random_faults(tmp_path):
    n, failures, ops = soak_update.random_campaign(str(tmp_path), seeds=8, cuts=5, first_seed=1000)
    assert n == 40
    assert failures == []
