"""Reduced slices of the verified-boot campaigns of `make soak` (soak_boot):
tampered images through the device's streaming verifier, and power cuts and
torn writes at every flash operation of an install, a confirmation and a
trial expiry, each followed by a boot that must run a verified image with the
boot state record and its floor intact."""
from ictl.measure import soak_boot


def test_tampered_images_are_all_rejected(tmp_path):
    # Every header byte, every 4th signature byte, 300 payload positions.
    mutants, accepted = soak_boot.tamper_campaign(str(tmp_path), payload_positions=300, sig_step=4)
    assert mutants == 128 + 96 + 300
    assert accepted == 0


def test_power_cuts_and_torn_writes_end_on_a_verified_image(tmp_path):
    points, failures = soak_boot.cut_campaign(str(tmp_path), tear_bytes=(5,))
    assert points >= 30
    assert not failures, failures[:2]
