"""Reduced slices of the verified-boot campaigns of `make soak` (soak_boot):
tampered images through the device's streaming verifier; power cuts and
torn writes at every flash operation of an install, a confirmation and a
trial expiry, each followed by a boot that must run a verified image with the
boot state record and its floor intact; exceptions at every step of the boot
path, which must never make the board loop."""
from ictl.measure import soak_boot
from ictl.sim import bootlab


def test_tampered_images_are_all_rejected(tmp_path):
    # Every header byte, every 4th signature byte, 300 payload positions.
    mutants, accepted = soak_boot.tamper_campaign(str(tmp_path), payload_positions=300, sig_step=4)
    assert mutants == 128 + 96 + 300
    assert accepted == 0


def test_power_cuts_and_torn_writes_end_on_a_verified_image(tmp_path):
    points, failures = soak_boot.cut_campaign(str(tmp_path), tear_bytes=(5,))
    assert points >= 30
    assert not failures, failures[:2]


def test_exceptions_at_every_boot_step_never_loop(tmp_path):
    # Active app_a or app_b, on trial or not; every step call of the boot
    # path once and every step at every boot, one kind of exception per step
    # in turn (make soak: every kind, a lone slot, resets at every step of a
    # trial image; test_boot_never_loops has one of those).
    points, loops, boots = soak_boot.fault_campaign(str(tmp_path), configs=soak_boot.CONFIGS[:4], rotate=True,
                                                    resets=False)
    assert points >= len(bootlab.STEPS) * 2 * 2
    assert not loops, loops[:3]
