"""The console in a real browser (issue 16, item 9): Debian's headless
Chromium, driven by Selenium through Debian's chromium-driver, against the
real HTTPS server, a real mosquitto and the rollout engine.

An operator's first session, as docs/console.md walks through it: the
first administrator made from the one-time setup link (TOTP secret read
off the page, codes computed here), sign-in with TOTP, the fleet overview
and its search, a device's readings chart and its range, a compromised
device's page (its event texts and field names are script/HTML/SVG/
template payloads), the events page, a staged rollout uploaded, started
with re-authentication and watched to the end on its page (the progress
comes from static/ui/poll.js, not from reloads), then the provisioning,
certificates, audit and users pages. An alarm quoting the compromised
device's words is raised on every page until acknowledged.

On every page: no Content-Security-Policy violation (a
securitypolicyviolation listener installed through DevTools before any
page script, and Chrome's own console log) and no console error. A
control shows the listener does catch one. Screenshots of each page go
to build/screenshots/ (artifacts, not committed)."""
import base64
import hashlib
import os
import shutil
import time

import pytest
from cryptography.hazmat.primitives import serialization

from ictl import ROOT, pki
from ictl.service import ingest
from ictl.service.rollout_rig import RolloutRig
from ictl.service.web import accounts
from service_ui_rig import ADMIN, PASSWORD, Console, Totp

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SHOTS = os.path.join(ROOT, "build", "screenshots")
pytestmark = pytest.mark.skipif(not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
                                reason="Debian's chromium and chromium-driver are not installed (tools/setup.sh "
                                       "installs them)")
# Recorded before any script of the page runs (DevTools injects it); the
# page's CSP does not apply to it.
CSP_LISTENER = ("window.__csp = [];"
                "document.addEventListener('securitypolicyviolation', function (e) {"
                " window.__csp.push(e.violatedDirective + ' ' + e.blockedURI + ' ' + e.sourceFile + ':' + e.lineNumber);"
                "});")
HOSTILE_EVENT = ("<svg onload=x>", "<img src=x onerror=a()>", "rejected", '"><script>alert("x1")</script>')
HOSTILE_FIELD = "<img src=x onerror=alert(2)>"
HOSTILE_UPDATE = "<svg onload=window.__xss=1>"


def _spki_pin(certfile):
    """Chromium trusts exactly this server key (--ignore-certificate-errors-
    spki-list), nothing else: the fleet CA is not in its store."""
    pub = pki.load_cert(certfile).public_key()
    der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    with RolloutRig(tmp, n=6) as rig:
        w = ingest.Ingest(rig.db_url, rig.fleet_key, rig.broker.ca_path)
        now = time.time()
        calm = rig.devices[0]
        for i in range(48):  # a day of readings, every 30 minutes
            w.process_batch([calm.reading(temp_c=18 + 4 * ((i % 12) / 12), humidity_pct=40 + i % 7)],
                            now=now - 86400 + i * 1800)
        bad = rig.devices[1]
        w.process_batch([bad.reading(**{HOSTILE_FIELD: 1.5, "{{7*7}}": 2}), bad.events(HOSTILE_EVENT),
                         bad.update_report("rolled_back", HOSTILE_UPDATE, ver=1 << 24)])  # an alarm quoting it
        w.db.close()
        with Console(tmp / "web", pki_dir=rig.broker.pki_dir, db_url=rig.db_url) as con:
            engine = rig.engine(tick_s=0.3)
            engine.start()
            try:
                yield rig, con
            finally:
                engine.stop()


@pytest.fixture(scope="module")
def browser(fleet, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    rig, con = fleet
    o = webdriver.ChromeOptions()
    o.binary_location = CHROMIUM
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run",
              "--user-data-dir=" + str(tmp_path_factory.mktemp("chromium-profile")),
              "--window-size=1280,1600", "--ignore-certificate-errors-spki-list=" + _spki_pin(con.certfile)):
        o.add_argument(a)
    o.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(options=o, service=Service(CHROMEDRIVER))
    drv.set_page_load_timeout(60)
    drv.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": CSP_LISTENER})
    os.makedirs(SHOTS, exist_ok=True)
    try:
        yield drv
    finally:
        drv.quit()


class Pages:
    """Opens pages and, on each, collects what the browser objected to."""

    def __init__(self, drv, url):
        self.drv, self.url = drv, url
        self.problems = {}

    def css(self, sel):
        from selenium.webdriver.common.by import By
        return self.drv.find_element(By.CSS_SELECTOR, sel)

    def fill(self, **fields):
        for name, value in fields.items():
            el = self.css('[name="%s"]' % name)
            el.clear()
            el.send_keys(value)

    def submit(self, sel):
        """Click a form's button and wait until the next page replaced this
        one and finished loading."""
        from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
        old = self.css("html")
        self.css(sel).click()
        end = time.monotonic() + 30
        while True:
            try:
                old.is_enabled()  # anything on the old page's node
            except StaleElementReferenceException:
                break
            except WebDriverException as e:
                # chromedriver's other word for it, caught mid-navigation
                if "does not belong to the document" not in str(e):
                    raise
                break
            if time.monotonic() > end:
                raise AssertionError("%s did not lead to another page (%s)" % (sel, self.drv.current_url))
            time.sleep(0.1)
        self.wait(lambda: self.drv.execute_script("return document.readyState") == "complete", 30, "the page to load")

    def wait(self, pred, timeout, what):
        from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, \
            WebDriverException
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if pred():
                    return
            except (NoSuchElementException, StaleElementReferenceException):
                pass  # between two pages, or poll.js replaced the element
            except WebDriverException as e:
                if "does not belong to the document" not in str(e):
                    raise
            time.sleep(0.2)
        raise AssertionError("timed out (%ds) waiting for %s on %s" % (timeout, what, self.drv.current_url))

    def check(self, name):
        """Screenshot, then this page's CSP violations and console errors."""
        self.drv.save_screenshot(os.path.join(SHOTS, name + ".png"))
        seen = list(self.drv.execute_script("return window.__csp || ['listener missing'];"))
        seen += ["console %s: %s" % (e["level"], e["message"]) for e in self.drv.get_log("browser")
                 if e["level"] in ("SEVERE", "WARNING")]
        if self.drv.execute_script("return window.__xss !== undefined;"):
            seen.append("a payload ran")
        if seen:
            self.problems[name] = seen

    def open(self, path, name):
        self.drv.get(self.url + path)
        self.check(name)


def test_operator_walkthrough(fleet, browser):
    rig, con = fleet
    # Control: the listener and the log do see a violation (an inline
    # script added to the login page is blocked and reported).
    c = Pages(browser, con.url)
    c.open("/login", "00-control")
    assert c.problems == {}
    browser.execute_script("var s = document.createElement('script'); s.textContent = 'window.__xss = 1';"
                           "document.body.appendChild(s);")
    time.sleep(0.3)
    c.check("00-control-violation")
    assert any("script-src" in x for x in c.problems["00-control-violation"]), c.problems

    p = Pages(browser, con.url)

    # First login: the one-time setup link `ictl serve --init` prints.
    p.open("/setup/" + accounts.init_setup_token(con.db), "01-setup")
    totp = Totp(p.css("code.secret").text.strip())
    p.fill(username=ADMIN, password=PASSWORD, password2=PASSWORD, code=totp.code())
    p.submit("form.narrow button[type=submit]")
    assert "Account ready" in browser.page_source, p.css("main").text
    p.check("02-setup-done")

    # Sign in with password and TOTP.
    p.open("/login", "03-login")
    p.fill(username=ADMIN, password=PASSWORD, code=totp.code())
    p.submit("form.narrow button[type=submit]")
    p.wait(lambda: browser.current_url.rstrip("/") == con.url, 30, "the overview after sign-in")
    p.check("04-overview")
    assert HOSTILE_UPDATE in p.css("#alarm-banner").text  # raised in the page, as text
    rows = browser.find_elements("css selector", "#devices tbody tr")
    assert len(rows) == 6, [r.text for r in rows]
    p.fill(q="sim-0001")
    p.submit("form.filters button")
    p.wait(lambda: "q=sim-0001" in browser.current_url, 30, "the search")
    assert [r.text.split()[0] for r in browser.find_elements("css selector", "#devices tbody tr")] == ["sim-0001"]
    p.check("05-overview-search")

    # A device's readings chart, and another range.
    p.open("/devices/sim-0000", "06-device")
    loaded = "return document.getElementById('chart').complete && document.getElementById('chart').naturalWidth;"
    p.wait(lambda: browser.execute_script(loaded), 30, "the chart")
    from selenium.webdriver.support.ui import Select
    Select(p.css('#range-form select[name="range"]')).select_by_value("7d")
    p.submit("#range-form button")
    p.wait(lambda: "range=7d" in browser.current_url and browser.execute_script(loaded), 30, "the 7-day chart")
    assert "range=7d" in p.css("#chart").get_attribute("src")
    p.check("07-device-chart-7d")

    # The compromised device: its words appear as text, nothing runs.
    p.open("/devices/sim-0001", "08-device-hostile")
    events = p.css("#device-events").text
    for text in HOSTILE_EVENT:
        assert text in events, (text, events)
    p.open("/devices/sim-0001/chart.svg?range=24h", "09-chart-svg-direct")
    assert HOSTILE_FIELD in browser.find_element("tag name", "svg").text
    p.open("/events", "10-events")
    p.submit("#alarms form button")  # acknowledge
    assert "Done" in p.css("h1").text
    p.open("/events", "10-events-acknowledged")
    assert not browser.find_elements("css selector", "#alarm-banner")

    # A staged rollout: upload, targets by filter, groups 1, 2, 3.
    upload = os.path.join(con.tmp, "update.tgz")
    with open(upload, "wb") as f:
        f.write(rig.update_archive())
    p.open("/rollouts", "11-rollouts")
    p.submit("#new-rollout")
    p.check("12-rollout-new")
    p.css('input[name="update"]').send_keys(upload)
    p.fill(q="sim-", name="browser rollout", canary="1", factor="2", group_timeout_s="60")
    p.submit("#rollout-form button[type=submit]")
    assert "Done" in p.css("h1").text, browser.page_source[-3000:]
    p.check("13-rollout-created")
    p.submit("#back")
    assert p.css("#rollout-state").text == "ready"
    p.check("14-rollout-ready")

    # Start: the form asks for the password and a fresh code again.
    p.fill(reauth_password=PASSWORD, reauth_code=totp.code())
    p.submit("#start-form button")
    assert "Done" in p.css("h1").text, browser.page_source[-3000:]
    p.submit("#back")
    p.check("15-rollout-started")
    # Watched, not reloaded: poll.js brings the progress to the page.
    p.wait(lambda: p.css("#progress-text").text.startswith("6 of 6 done"), 120, "the rollout to finish")
    p.wait(lambda: p.css("#progress-live").text == "(finished)" and p.css("#rollout-state").text == "done", 30,
           "the final state")
    assert p.css("#progress-bar").get_attribute("value") == "6"
    states = [r.find_elements("css selector", "td")[2].text for r in
              browser.find_elements("css selector", "#rollout-devices tbody tr")]
    assert states == ["confirmed"] * 6, states
    assert not p.css("#pause-form").is_displayed() and not p.css("#cancel-form").is_displayed()
    p.wait(lambda: browser.execute_script("return document.getElementById('timeline').naturalWidth;"), 20,
           "the timeline picture")
    p.check("16-rollout-done")

    for path, name in (("/provisioning", "17-provisioning"), ("/certificates", "18-certificates"),
                       ("/audit", "19-audit"), ("/users", "20-users"), ("/account", "21-account")):
        p.open(path, name)
    p.open("/audit", "19-audit")
    p.submit("#audit-verify-link")
    p.check("19-audit-verified")
    assert "Chain verified" in p.css("#audit-verify").text
    audit = p.css("#audit").text
    assert "rollout_start" in audit and "rollout_create" in audit, audit
    assert p.problems == {}, p.problems
