"""Human evaluation: the blind export (page, CSV, key), the import, and the page itself driven in
headless Chromium (fill verdicts, press Save, read the downloaded CSV back)."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import shutil
import time

import numpy as np
import pytest

from metarm_jax.eval import human
from metarm_jax.runtime.errors import UserError

NAME_A, NAME_B = "POLICY_METARM_R2", "POLICY_SFT_BASE"
PROMPTS = [
    "\n\nHuman: How do I boil an egg?\n\nAssistant:",
    'Say <b>hi</b> & "quote", then a comma, here',
    "Tell me a joke.\nOn two lines.",
    "What is 2 + 2?",
    "Name a colour.",
]
RA = ["Put it in boiling water for 9 minutes.", "hi", "Why did the chicken...", "4", "Blue"]
RB = ["Crack it.", "<script>alert(1)</script>", "No.", "five", "Red, I think"]


def _export(tmp_path, seed=3):
    return human.export_pairs(
        str(tmp_path / "human"), PROMPTS, RA, RB, name_a=NAME_A, name_b=NAME_B, seed=seed
    )


def _write_verdicts(path, export_id, verdicts: dict[str, str]):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["export_id", "pair_id", "verdict", "rater"])
        for pid, v in verdicts.items():
            w.writerow([export_id, pid, v, "t"])


def _rows(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _expected(key: dict, verdicts: dict[str, str], policy: str) -> list[int]:
    out = []
    for p in key["pairs"]:
        v = verdicts[p["pair_id"]]
        out.append(0 if v.lower() == "tie" else (1 if p[v.upper()] == policy else -1))
    return out


def test_export_is_blind_seeded_and_self_contained(tmp_path):
    paths = _export(tmp_path)
    page = pathlib.Path(paths["html"]).read_text()
    table = pathlib.Path(paths["csv"]).read_text()
    key = json.loads(pathlib.Path(paths["key"]).read_text())
    for text in (page, table):
        assert NAME_A not in text and NAME_B not in text
    # No external resource of any kind, and the responses are escaped, not markup.
    for needle in ("http://", "https://", "src=", "<link", "@import", "url("):
        assert needle not in page, needle
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)" in page
    assert page.count('<section class="pair"') == len(PROMPTS)
    # The key: each pair shows both policies, once each; the draw is seeded.
    assert key["export_id"] == paths["export_id"]
    assert all({p["A"], p["B"]} == {NAME_A, NAME_B} for p in key["pairs"])
    assert human.read_key(_export(tmp_path / "again")["key"])["pairs"] == key["pairs"]
    flips = [
        [p["A"] == NAME_B for p in human.read_key(_export(tmp_path / f"s{s}", s)["key"])["pairs"]]
        for s in range(4)
    ]
    assert len({tuple(f) for f in flips}) > 1  # another seed, other sides
    # The spreadsheet CSV shows each pair's sides as the key says.
    rows = _rows(paths["csv"])
    assert [r["prompt"] for r in rows] == PROMPTS
    for r, p, a, b in zip(rows, key["pairs"], RA, RB):
        assert (r["response_A"], r["response_B"]) == ((a, b) if p["A"] == NAME_A else (b, a))


def test_import_from_each_side(tmp_path):
    paths = _export(tmp_path)
    key = human.read_key(paths["key"])
    verdicts = {"p0001": "A", "p0002": "b", "p0003": "tie", "p0004": "B", "p0005": "A"}
    f = tmp_path / "v.csv"
    _write_verdicts(f, paths["export_id"], verdicts)
    res = human.import_verdicts(str(f), paths["key"], policy=NAME_A)
    assert res.outcomes.tolist() == _expected(key, verdicts, NAME_A)
    assert res.win + res.tie + res.lose == 5 and res.tie == 1
    other = human.import_verdicts(str(f), paths["key"], policy=NAME_B)
    np.testing.assert_array_equal(other.outcomes, -res.outcomes)
    assert human.import_verdicts(str(f), paths["key"]).stats["policy"] == NAME_A
    # The spreadsheet CSV, filled in, imports the same way.
    rows = _rows(paths["csv"])
    for r in rows:
        r["verdict"] = verdicts[r["pair_id"]]
    g = tmp_path / "filled.csv"
    with open(g, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    np.testing.assert_array_equal(
        human.import_verdicts(str(g), paths["key"], policy=NAME_A).outcomes, res.outcomes
    )


def test_import_errors_are_one_line(tmp_path):
    paths = _export(tmp_path)
    eid = paths["export_id"]
    f = tmp_path / "v.csv"
    cases = [
        ({"p0001": "A"}, "4 of 5 pairs have no verdict"),
        ({"p0001": "maybe"}, "verdict 'maybe' for p0001"),
        ({"p9999": "A"}, "unknown pair_id 'p9999'"),
    ]
    for verdicts, msg in cases:
        _write_verdicts(f, eid, verdicts)
        with pytest.raises(UserError, match=msg) as e:
            human.import_verdicts(str(f), paths["key"])
        assert "\n" not in str(e.value)
    _write_verdicts(f, "000000000000", {"p0001": "A"})
    with pytest.raises(UserError, match="is from export 000000000000"):
        human.import_verdicts(str(f), paths["key"])
    _write_verdicts(f, eid, {"p0001": "A"})
    with pytest.raises(UserError, match="not in"):
        human.import_verdicts(str(f), paths["key"], policy="nobody")
    part = human.import_verdicts(str(f), paths["key"], allow_missing=True)
    assert part.n == 1 and part.indices.tolist() == [0] and part.stats["missing"] == 4


# ------------------------------------------------------------------------------------------
# The page in headless Chromium.
# ------------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip)")
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("needs Chromium: apt-get install -y chromium chromium-driver")
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        opts.add_argument(flag)
    opts.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(downloads),
            "download.prompt_for_download": False,
            "safebrowsing.enabled": False,
        },
    )
    log = tmp_path / "chromedriver.log"  # its tail is in the failure message, if any
    try:
        driver = webdriver.Chrome(
            service=Service(executable_path=CHROMEDRIVER, log_output=str(log)), options=opts
        )
    except Exception as e:
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
        raise AssertionError(f"Chromium did not start: {e}\nchromedriver log:\n{tail}") from e
    try:
        driver.execute_cdp_cmd(
            "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )
        yield driver, downloads
    finally:
        driver.quit()


def _wait_for_csv(folder: pathlib.Path, timeout: float = 60.0) -> pathlib.Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [p for p in folder.iterdir() if p.suffix == ".csv"]
        if done and not any(p.name.endswith(".crdownload") for p in folder.iterdir()):
            return done[0]
        time.sleep(0.1)
    raise AssertionError(f"no CSV was downloaded into {folder}: {list(folder.iterdir())}")


def _click(driver, css: str) -> None:
    """Scroll the element to the middle of the window (clear of the fixed bar), as a person
    would, then click it."""
    from selenium.webdriver.common.by import By

    el = driver.find_element(By.CSS_SELECTOR, css)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", el)
    el.click()


def test_the_page_in_headless_chromium(tmp_path, browser):
    from selenium.webdriver.common.by import By

    driver, downloads = browser
    paths = _export(tmp_path)
    key = human.read_key(paths["key"])
    driver.get(pathlib.Path(paths["html"]).resolve().as_uri())
    assert driver.title == "Which response is better?"
    assert driver.find_element(By.ID, "progress").text == "0 of 5 answered"
    # The escaped response is shown as text, never run.
    texts = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".resp-a, .resp-b")]
    assert "<script>alert(1)</script>" in texts
    verdicts = {"p0001": "A", "p0002": "B", "p0003": "tie", "p0004": "A"}  # p0005 left empty
    for pid, v in verdicts.items():
        _click(driver, f'input[name="v-{pid}"][value="{v}"]')
    driver.find_element(By.ID, "rater").send_keys("Ann, B.")
    assert driver.find_element(By.ID, "progress").text == "4 of 5 answered"
    driver.execute_script("window.scrollTo(0, 0);")
    shot = os.environ.get("METARM_HUMAN_SCREENSHOT") or str(tmp_path / "page.png")
    driver.save_screenshot(shot)
    assert pathlib.Path(shot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    driver.find_element(By.ID, "save").click()
    got = _wait_for_csv(downloads)
    assert got.name == f"verdicts-{paths['export_id']}.csv"
    rows = _rows(got)
    assert [r["pair_id"] for r in rows] == [f"p000{i}" for i in range(1, 6)]
    assert rows[0]["rater"] == "Ann, B." and rows[4]["verdict"] == ""
    with pytest.raises(UserError, match="1 of 5 pairs have no verdict"):
        human.import_verdicts(str(got), paths["key"])
    res = human.import_verdicts(str(got), paths["key"], policy=NAME_A, allow_missing=True)
    assert res.outcomes.tolist() == _expected(
        {"pairs": key["pairs"][:4]}, verdicts, NAME_A
    ) and res.indices.tolist() == [0, 1, 2, 3]
    # A reload keeps the choices (localStorage); the last one then completes the set.
    driver.refresh()
    assert driver.find_element(By.ID, "progress").text == "4 of 5 answered"
    _click(driver, 'input[name="v-p0005"][value="B"]')
    got.unlink()
    driver.find_element(By.ID, "save").click()
    full = human.import_verdicts(str(_wait_for_csv(downloads)), paths["key"], policy=NAME_B)
    assert full.outcomes.tolist() == _expected(key, {**verdicts, "p0005": "B"}, NAME_B)
