"""The review page in real headless Chromium against the real server (uvicorn on 127.0.0.1):
log in, accept with a, reject with r and a tag, undo with u, move with j/k, filter; the store
reflects each step."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fixtures.review import Spec, add_edit
from sqlalchemy import select

from common.core.settings import ReviewSettings, get_settings
from common.review import auth
from common.review.app import create_app
from common.store.db import Database, get_database
from common.store.rows import Review, Reviewer
from common.store.storage import get_storage

pytestmark = pytest.mark.browser
PASSWORD = "a long enough password"


@contextmanager
def serving(app) -> Iterator[str]:
    """The app under uvicorn on 127.0.0.1 and a free port, in a thread."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@contextmanager
def chromium() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    settings = get_settings()
    os.environ.setdefault("SE_OFFLINE", "true")
    profile = tempfile.mkdtemp(prefix="review-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(settings.scrape.chromium_path)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-quic", "--window-size=1400,1100", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(settings.scrape.chromedriver_path)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def history(db: Database) -> list[tuple[int, str, list[str]]]:
    with db.session() as s:
        rows = s.execute(select(Review.edit_id, Review.decision, Review.tags)
                         .join(Reviewer, Reviewer.id == Review.reviewer_id)
                         .where(Reviewer.name == "alice").order_by(Review.id)).all()
    return [(e, d, list(t)) for e, d, t in rows]


def test_review_page_by_keyboard(tmp_path: Path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    settings = get_settings()
    db = get_database(settings.database_url)
    storage = get_storage(settings.storage_url)
    near = add_edit(db, storage, Spec(ai="rejected", reasons=("identity_lost",), margin=0.01, clip=0.21), 1)
    mid = add_edit(db, storage, Spec(margin=0.05, clip=0.28, site="shop-b", garments=2), 2)
    far = add_edit(db, storage, Spec(margin=0.3, clip=0.4), 3)
    with db.session() as s:
        auth.add_reviewer(s, "alice", PASSWORD)
    tags = ReviewSettings().tags
    with serving(create_app(db, storage, ReviewSettings())) as base, chromium() as driver:
        wait = WebDriverWait(driver, 15)
        keys = ActionChains(driver)

        def press(key: str) -> None:
            keys.send_keys(key).perform()

        def card(edit_id: int):
            return driver.find_element(By.CSS_SELECTOR, f'.item[data-edit-id="{edit_id}"]')

        def state_is(edit_id: int, state: str) -> None:
            wait.until(lambda d: card(edit_id).get_attribute("data-state") == state)

        def current() -> int:
            return int(driver.find_element(By.CSS_SELECTOR, ".item.current").get_attribute("data-edit-id"))

        driver.get(base + "/")
        assert "/login" in driver.current_url  # no session: the login page
        driver.find_element(By.NAME, "username").send_keys("alice")
        driver.find_element(By.NAME, "password").send_keys(PASSWORD + "!")
        driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        refused = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".error"))  # the answer page has loaded
        assert refused[0].text == auth.LOGIN_REFUSED
        driver.find_element(By.NAME, "username").send_keys("alice")
        driver.find_element(By.NAME, "password").send_keys(PASSWORD)
        driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".item.current"))
        ids = [int(e.get_attribute("data-edit-id")) for e in driver.find_elements(By.CSS_SELECTOR, ".item")]
        assert ids == [near, mid, far]  # least certain first
        # every image arrived (the session cookie is sent with them) and the slider moves
        wait.until(lambda d: d.execute_script(
            "return Array.from(document.images).every(i => i.complete && i.naturalWidth === 64)"))
        assert len(driver.find_elements(By.CSS_SELECTOR, f'.item[data-edit-id="{mid}"] .garments img')) == 2
        driver.execute_script("const r = document.querySelector('.compare-range'); r.value = 20;"
                              "r.dispatchEvent(new Event('input'));")
        assert "20%" in driver.execute_script("return document.querySelector('.compare-top').style.clipPath")

        assert current() == near
        press("a")
        state_is(near, "accepted")
        assert history(db) == [(near, "accepted", [])]
        assert current() == mid  # on to the next one
        note = card(mid).find_element(By.NAME, "note")
        note.send_keys("sleeve melts into the ")
        press("a")  # typed into the note, not a decision
        note.send_keys("rm\ue00c")  # Escape leaves the field; keys act on the item again
        assert len(history(db)) == 1 and current() == mid
        press("3")
        assert card(mid).find_element(By.CSS_SELECTOR, f'input[value="{tags[2]}"]').is_selected()
        press("r")
        state_is(mid, "rejected")
        assert history(db)[-1] == (mid, "rejected", [tags[2]])
        with db.session() as s:
            assert s.scalar(select(Review.note).order_by(Review.id.desc()).limit(1)) == "sleeve melts into the arm"
        assert "rejected" in card(mid).find_element(By.CSS_SELECTOR, '[data-role="mine"]').text
        assert driver.find_element(By.CSS_SELECTOR, '[data-p="mine"]').text == "2"
        press("u")
        state_is(mid, "")
        assert history(db)[-1] == (mid, "cleared", [])
        assert len(history(db)) == 3 and current() == mid
        press("k")
        assert current() == near
        press("j")
        press("j")
        assert current() == far
        press("?")
        assert driver.find_element(By.ID, "help").is_displayed()
        press("a")  # keys are held while the help is open
        time.sleep(0.3)
        assert len(history(db)) == 3
        press("\ue00c")  # Escape
        assert not driver.find_element(By.ID, "help").is_displayed()
        shot = tmp_path / "review.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("SYNTHPIPE_TEST_SCREENSHOT_DIR"):
            shutil.copy(shot, Path(os.environ["SYNTHPIPE_TEST_SCREENSHOT_DIR"]) / "review.png")

        # filter: one site; then my own decisions
        Select(driver.find_element(By.NAME, "site")).select_by_value("shop-b")
        driver.find_element(By.ID, "apply-filters").click()
        wait.until(lambda d: "site=shop-b" in d.current_url)
        assert [int(e.get_attribute("data-edit-id")) for e in driver.find_elements(By.CSS_SELECTOR, ".item")] == [mid]
        press("r")
        state_is(mid, "rejected")
        Select(driver.find_element(By.NAME, "site")).select_by_value("")
        Select(driver.find_element(By.NAME, "mine")).select_by_value("done")
        driver.find_element(By.ID, "apply-filters").click()
        wait.until(lambda d: "mine=done" in d.current_url)
        done = {int(e.get_attribute("data-edit-id")): e.get_attribute("data-state")
                for e in driver.find_elements(By.CSS_SELECTOR, ".item")}
        assert done == {near: "accepted", mid: "rejected"}
        assert history(db)[-1] == (mid, "rejected", [])

        # Shift+A on the items still to review: every visible one I have not decided is accepted
        Select(driver.find_element(By.NAME, "mine")).select_by_value("pending")
        driver.find_element(By.ID, "apply-filters").click()
        wait.until(lambda d: "mine=pending" in d.current_url and d.find_elements(By.CSS_SELECTOR, ".item.current"))
        assert [int(e.get_attribute("data-edit-id")) for e in driver.find_elements(By.CSS_SELECTOR, ".item")] == [far]
        press("A")
        wait.until(lambda d: history(db)[-1] == (far, "accepted", []))
    assert [h[:2] for h in history(db)[-2:]] == [(mid, "rejected"), (far, "accepted")]
