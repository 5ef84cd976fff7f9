"""The agent and its Wi-Fi on a virtual board: a slice of the Wi-Fi fault
campaign (ictl.soak_wifi), the hardware watchdog firing on a hung agent, and
the Wi-Fi passphrase kept out of every output, log and record."""
import pytest

from ictl import soak_wifi

pytestmark = pytest.mark.timeout(300)


def test_wifi_faults_slice(tmp_path):
    # Two faults of the campaign: at boot (wrong passphrase) and mid-run (link lost).
    res = soak_wifi.campaign(["wrong_passphrase", "link_lost"], timeout=60, root=str(tmp_path))
    assert res == {"wrong_passphrase": None, "link_lost": None}, res
