"""One headless Chromium driven through Selenium, reused across pages and restarted when it
dies.

The browser renders documents and runs their scripts, but never loads images, fonts or
media (content setting + DevTools URL blocking): every image request goes through the
fetcher, which honours robots.txt and the per-host delay. Nor does it leave the site: a
:class:`~worker_scrape.guard.HostGuard` blocks requests to other hosts inside Chromium.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from urllib3.exceptions import HTTPError as Urllib3HTTPError

from common.core.settings import ScrapeSettings
from worker_scrape.errors import INSTALL_HINT, BrowserError, BrowserMissing, PageError
from worker_scrape.guard import BlockedRequest, HostGuard

log = logging.getLogger(__name__)

BASE_FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-crash-reporter",
    "--disable-breakpad",
    "--disable-extensions",
    "--mute-audio",
    "--window-size=1280,2000",
)
BLOCKED_URLS = [
    "*/favicon.ico",
    "*.png",
    "*.jpg",
    "*.jpeg",
    "*.gif",
    "*.webp",
    "*.avif",
    "*.bmp",
    "*.ico",
    "*.svg",
    "*.tif",
    "*.tiff",
    "*.woff",
    "*.woff2",
    "*.ttf",
    "*.otf",
    "*.mp4",
    "*.webm",
    "*.mp3",
    "*.m4a",
    "*.ogg",
]
# errors that mean the browser or its driver is gone (a crash, a kill, a lost session)
DEAD_ERRORS: tuple[type[BaseException], ...] = (WebDriverException, Urllib3HTTPError, OSError)

_SCROLL_JS = """
const [steps, pause, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
let i = 0;
function step() {
  const h = window.innerHeight || 800;
  const end = Math.max(document.body ? document.body.scrollHeight : 0,
                       document.documentElement.scrollHeight);
  if (i >= steps || window.scrollY + h >= end) { done(true); return; }
  i += 1; window.scrollBy(0, h); setTimeout(step, pause);
}
step();
"""

_INTERACT_JS = """
const [sel, action, max, budgetMs, done] = [arguments[0], arguments[1], arguments[2], arguments[3],
                                            arguments[arguments.length - 1]];
const seen = [];
const keep = v => { if (v && seen.length < 2000) seen.push(v); };
const watch = new MutationObserver(records => {
  for (const r of records) {
    if (r.type === 'attributes') keep(r.target.getAttribute(r.attributeName));
    for (const n of r.addedNodes || []) {
      if (n.nodeType !== 1) continue;
      for (const el of [n, ...n.querySelectorAll('img, source, a[href]')]) {
        for (const a of ['src', 'srcset', 'data-src', 'data-zoom-image', 'href']) keep(el.getAttribute && el.getAttribute(a));
      }
    }
  }
});
watch.observe(document.documentElement, {subtree: true, childList: true, attributes: true,
  attributeFilter: ['src', 'srcset', 'href', 'data-src', 'data-srcset', 'data-zoom-image', 'data-large']});
const stay = e => { if (e.target.closest && e.target.closest('a[href]')) e.preventDefault(); };
window.addEventListener('click', stay, true);  // a thumbnail's link must not take the tab away
let els = [];
try { els = Array.from(document.querySelectorAll(sel)).slice(0, max); } catch (e) { els = []; }
const t0 = Date.now();
const kinds = action === 'click' ? ['mouseover', 'mouseenter', 'mousedown', 'mouseup', 'click']
                                 : ['mouseover', 'mouseenter', 'mousemove'];
let i = 0;
function finish() { watch.disconnect(); window.removeEventListener('click', stay, true); done([i, seen]); }
function step() {
  if (i >= els.length || Date.now() - t0 > budgetMs) { setTimeout(finish, 50); return; }
  const el = els[i++];
  for (const k of kinds) el.dispatchEvent(new MouseEvent(k, {bubbles: k !== 'mouseenter', cancelable: true, view: window}));
  setTimeout(step, 50);
}
step();
"""

_EXTRACT_JS = """
const css = arguments[0];
const LAZY = ['data-src', 'data-lazy', 'data-lazy-src', 'data-original', 'data-original-src'];
const LAZYSET = ['data-srcset', 'data-lazy-srcset'];
const IMAGEISH = /\\.(jpe?g|png|webp|avif|gif|bmp|tiff?)([?#,\\s]|$)|\\s\\d+(\\.\\d+)?[wx](\\s*,|\\s*$)/i;
const IMAGE_FILE = /\\.(jpe?g|png|webp|avif|gif|bmp|tiff?)([?#]|$)/i;
const LANDMARKS = 'nav, menu, [role="navigation"], [role="menu"], [role="menubar"], [role="banner"], '
                  + '[role="contentinfo"]';
const MENU_RE = /(^|[\\s_-])(menu|megamenu|mega-menu|navbar|navigation|nav|flyout|site-header|site-footer)($|[\\s_-])/i;
function landmark(el) {
  const lm = el.closest(LANDMARKS);
  if (lm) return (lm.getAttribute('role') || lm.tagName).toLowerCase();
  for (const tag of ['header', 'footer']) {  // the page's, not an article's (HTML landmarks)
    const h = el.closest(tag);
    if (h && !h.closest('article, main, section, [role="main"], aside')) return tag;
  }
  let e = el.parentElement;
  for (let d = 0; e && d < 15; e = e.parentElement, d++) {
    const c = (typeof e.className === 'string' ? e.className : '') + ' ' + (e.id || '');
    if (MENU_RE.test(c)) return 'menu';
  }
  return null;
}
function box(el) { const r = el.getBoundingClientRect(); return [Math.round(r.width), Math.round(r.height)]; }
// images never load here, so an <img>'s layout box is the broken-image icon or its alt text,
// unless the page gave it a size (attributes or inline style): only then is it the rendered size
function imgBox(img) {
  const sized = (img.getAttribute('width') && img.getAttribute('height'))
                || (img.style.width && img.style.height) || img.naturalWidth > 0;
  return sized ? box(img) : null;
}
function visible(el) {
  const st = getComputedStyle(el), r = el.getBoundingClientRect();
  return st.display !== 'none' && st.visibility !== 'hidden' && parseFloat(st.opacity || '1') > 0
         && r.width > 0 && r.height > 0;
}
function hint(el) {
  return ((typeof el.className === 'string' ? el.className : '') + ' ' + (el.id || '') + ' '
          + (el.getAttribute('alt') || '')).slice(0, 300);
}
const imgs = [], imgIndex = new Map();
for (const img of document.querySelectorAll('img')) {
  const rec = {src: img.getAttribute('src'), srcset: img.getAttribute('srcset'),
               lazy: [], lazysets: [], sources: [], data: [],
               width_attr: img.getAttribute('width'), height_attr: img.getAttribute('height'),
               natural: [img.naturalWidth, img.naturalHeight], box: imgBox(img), visible: visible(img),
               landmark: landmark(img), hint: hint(img)};
  for (const a of LAZY) { const v = img.getAttribute(a); if (v) rec.lazy.push(v); }
  for (const a of LAZYSET) { const v = img.getAttribute(a); if (v) rec.lazysets.push(v); }
  for (const at of img.attributes) {
    if (at.name.startsWith('data-') && !LAZY.includes(at.name) && !LAZYSET.includes(at.name)
        && at.value.length < 4000 && IMAGEISH.test(at.value)) rec.data.push([at.name, at.value]);
  }
  const pic = img.closest('picture');
  if (pic) for (const s of pic.querySelectorAll('source')) {
    const v = s.getAttribute('srcset') || s.getAttribute('data-srcset'); if (v) rec.sources.push(v);
  }
  imgIndex.set(img, imgs.length);
  imgs.push(rec);
}
const singles = [];
for (const m of document.querySelectorAll(
    'meta[property="og:image"], meta[name="twitter:image"], meta[itemprop="image"]')) {
  if (m.content) singles.push({url: m.content, via: 'meta'});
}
const all = document.body ? document.body.querySelectorAll('*') : [];
const dataAttrs = [];
for (let i = 0; i < all.length && i < 5000; i++) {
  const el = all[i];
  if (el.tagName === 'IMG' || el.tagName === 'SOURCE') continue;
  for (const at of el.attributes) {
    if (!at.name.startsWith('data-') || at.value.length >= 4000 || !IMAGEISH.test(at.value)) continue;
    const via = ['data-bg', 'data-background', 'data-background-image'].includes(at.name) ? 'css' : 'data_attr';
    dataAttrs.push({name: at.name, value: at.value, via: via, landmark: landmark(el), box: box(el),
                    hint: hint(el)});
  }
  if (css) {
    const bg = getComputedStyle(el).backgroundImage;
    if (bg && bg !== 'none') for (const m of bg.matchAll(/url\\(["']?([^"')]+)["']?\\)/g)) {
      singles.push({url: m[1], via: 'css', landmark: landmark(el), box: box(el), hint: hint(el)});
    }
  }
}
const links = [], anchors = [];
for (const a of document.querySelectorAll('a[href], area[href]')) {
  if (IMAGE_FILE.test(a.href)) {
    const inner = a.querySelector('img');
    anchors.push({url: a.href, img: inner ? imgIndex.get(inner) : -1, landmark: landmark(a), hint: hint(a)});
    continue;
  }
  if (!/\\bnofollow\\b/i.test(a.getAttribute('rel') || '')) links.push(a.href);
}
const imageSrc = Array.from(document.querySelectorAll('link[href]'))
  .filter(l => /(^|\\s)image_src(\\s|$)/i.test(l.getAttribute('rel') || '')).map(l => l.href);
const ldjson = [], state = [];
let budget = 4000000;
for (const s of document.querySelectorAll('script:not([src])')) {
  const t = s.textContent || '';
  if (t.length > budget) continue;
  budget -= t.length;
  ((s.type || '').toLowerCase() === 'application/ld+json' ? ldjson : state).push(t);
}
const metaRobots = Array.from(document.querySelectorAll('meta[name="robots" i]'))
  .map(m => (m.content || '').toLowerCase()).join(',');
let status = null;
try { const nav = performance.getEntriesByType('navigation')[0];
      if (nav && nav.responseStatus) status = nav.responseStatus; } catch (e) {}
return {url: location.href, base: document.baseURI, status: status, title: document.title,
        imgs: imgs, singles: singles, links: links, meta_robots: metaRobots, anchors: anchors,
        data_attrs: dataAttrs, image_src: imageSrc, ldjson: ldjson, state: state};
"""


@dataclass
class RenderedPage:
    """What the browser saw: the final URL, the HTTP status (when Chromium reports it) and
    raw image/link data for :mod:`worker_scrape.extract`."""

    url: str
    base: str
    status: int | None
    title: str = ""
    imgs: list[dict[str, Any]] = field(default_factory=list)
    singles: list[Any] = field(default_factory=list)  # meta tags and CSS backgrounds: {url, via, ...}
    links: list[str] = field(default_factory=list)
    anchors: list[dict[str, Any]] = field(default_factory=list)  # links to image files (zoom links)
    data_attrs: list[dict[str, Any]] = field(default_factory=list)  # data-* attributes holding image URLs
    image_src: list[str] = field(default_factory=list)  # <link rel=image_src>
    ldjson: list[str] = field(default_factory=list)  # JSON-LD blocks, raw
    state: list[str] = field(default_factory=list)  # other inline scripts (embedded state), raw
    meta_robots: str = ""
    blocked: list[BlockedRequest] = field(default_factory=list)  # off-site requests the guard stopped
    interacted: list[str] = field(default_factory=list)  # URLs the page set while its thumbnails were hovered
    interactions: int = 0  # elements hovered or clicked

    def image_data(self) -> dict[str, Any]:
        """What :func:`worker_scrape.extract.page_candidates` reads."""
        return {"imgs": self.imgs, "singles": self.singles, "anchors": self.anchors, "data_attrs": self.data_attrs,
                "image_src": self.image_src, "ldjson": self.ldjson, "state": self.state,
                "interacted": self.interacted}


PROFILE_PREFIX = "synthpipe-chromium-"


OWNER_FILE = ".owner"  # in each profile, flock()ed by the worker that owns the browser


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _hold_owner_lock(profile: str) -> int:
    """Lock the profile's owner file for as long as this process lives (the kernel drops the lock
    when it dies, however it dies); returns the descriptor to close when the browser is closed."""
    path = os.path.join(profile, OWNER_FILE)
    fd = os.open(path + ".new", os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.replace(path + ".new", path)  # a reaper only ever sees the owner file already locked
    return fd


def _orphaned(profile: str) -> int | None:
    """A descriptor holding the owner lock of ``profile`` if its owner is gone, else None.

    The lock decides even across PID namespaces (containers sharing /tmp). A profile without
    an owner file yet falls back to its name's pid: it is orphaned only if that pid is gone.
    """
    try:
        fd = os.open(os.path.join(profile, OWNER_FILE), os.O_RDWR)
    except FileNotFoundError:
        owner = os.path.basename(profile)[len(PROFILE_PREFIX):].split("-", 1)[0]
        if owner.isdigit() and not _pid_alive(int(owner)):
            return os.open(profile, os.O_RDONLY)  # nothing to lock: any descriptor will do
        return None
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held: the owner is alive
        os.close(fd)
        return None
    return fd


def reap_orphaned_browsers(tmpdir: str | None = None) -> int:
    """Kill the Chromium trees of workers that died without closing them; return how many.

    A worker killed with SIGKILL (OOM killer, ``kill -9``, a lost container) cannot quit its
    browser, and chromedriver runs in its own session, so Chromium would outlive it and hold
    memory until the machine reboots. Each profile's owner holds a lock on a file in it; a
    profile whose lock is free marks an orphan: every process naming that profile is killed by
    process group, and the profile is removed. Linux (``/proc``); elsewhere only profiles go.
    """
    base = tmpdir or tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(base) if n.startswith(PROFILE_PREFIX)]
    except OSError:
        return 0
    orphans: dict[str, int] = {}
    for name in names:
        fd = _orphaned(os.path.join(base, name))
        if fd is not None:
            orphans[os.path.join(base, name)] = fd
    if not orphans:
        return 0
    groups: set[int] = set()
    for pid in (p for p in os.listdir("/proc") if p.isdigit()) if os.path.isdir("/proc") else ():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = fh.read().decode(errors="replace")
            if any(f"--user-data-dir={profile}" in cmdline for profile in orphans):
                groups.add(os.getpgid(int(pid)))
        except OSError:
            continue
    for group in groups - {os.getpgrp()}:
        with contextlib.suppress(OSError):
            os.killpg(group, signal.SIGKILL)
    for profile, fd in orphans.items():
        shutil.rmtree(profile, ignore_errors=True)
        os.close(fd)
    log.warning("reaped %d browser(s) left by killed workers (%d process groups)", len(orphans), len(groups))
    return len(orphans)


def check_browser_paths(config: ScrapeSettings) -> None:
    """Raise :class:`BrowserMissing` (a settings error) unless Chromium and chromedriver are there."""
    for key, path in (("chromium_path", config.chromium_path), ("chromedriver_path", config.chromedriver_path)):
        if not (Path(path).is_file() and os.access(path, os.X_OK)):
            raise BrowserMissing(
                f"scrape.{key}: no executable at {path} (set SYNTHPIPE_SCRAPE__{key.upper()}; {INSTALL_HINT})")


def _allow_all(_url: str) -> bool:
    return True


def _block_all(_url: str) -> bool:
    return False


class Browser:
    """A lazily started, restartable headless Chromium.

    ``headless``, ``extra_args`` and ``reuse`` are for tests and debugging, not settings.
    """

    def __init__(self, config: ScrapeSettings, *, headless: bool = True, extra_args: tuple[str, ...] = (),
                 max_restarts: int = 10, css_backgrounds: bool = True) -> None:
        self.config = config
        self.headless = headless
        self.extra_args = extra_args
        self.max_restarts = max_restarts
        self.css_backgrounds = css_backgrounds
        self._guard: HostGuard | None = None
        self.restarts = 0
        self.starts = 0
        self._driver: webdriver.Chrome | None = None
        self._profile: str | None = None
        self._owner_lock: int | None = None

    # --- lifecycle ------------------------------------------------------------------
    @property
    def driver(self) -> webdriver.Chrome:
        if self._driver is None:
            self.start()
        assert self._driver is not None
        return self._driver

    @property
    def running(self) -> bool:
        return self._driver is not None

    def start(self) -> None:
        os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never download
        cfg = self.config
        check_browser_paths(cfg)
        reap_orphaned_browsers()
        # the owner's pid in the profile name lets a later worker reap this browser if we are killed
        self._profile = tempfile.mkdtemp(prefix=f"{PROFILE_PREFIX}{os.getpid()}-")
        self._owner_lock = _hold_owner_lock(self._profile)
        opts = webdriver.ChromeOptions()
        opts.binary_location = str(cfg.chromium_path)
        if self.headless:
            opts.add_argument("--headless=new")
        for flag in (*BASE_FLAGS, *self.extra_args):
            opts.add_argument(flag)
        opts.add_argument(f"--user-data-dir={self._profile}")
        opts.add_argument(f"--user-agent={cfg.user_agent}")
        opts.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.images": 2}
        )
        service = Service(
            executable_path=str(cfg.chromedriver_path),
            popen_kw={"start_new_session": True},  # own process group: killed as one
        )
        t0 = time.monotonic()
        try:
            driver = webdriver.Chrome(service=service, options=opts)
        except (WebDriverException, OSError) as exc:
            self._cleanup_processes(service)
            self.close()  # the profile and its owner lock
            first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            if "Unable to obtain driver" in first or isinstance(exc, OSError):
                raise BrowserMissing(f"scrape.chromium_path / scrape.chromedriver_path: cannot start "
                                     f"Chromium ({first}); {INSTALL_HINT}") from exc
            raise BrowserError(f"cannot start Chromium: {first}") from exc
        self._driver = driver
        self.starts += 1
        try:
            driver.set_page_load_timeout(cfg.page_timeout_s)
            driver.set_script_timeout(max(10.0, cfg.page_timeout_s))
            driver.execute_cdp_cmd("Network.enable", {})
            driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": BLOCKED_URLS})
            target = driver.execute_cdp_cmd("Target.getTargetInfo", {})["targetInfo"]["targetId"]
            self._guard = HostGuard(driver.capabilities["goog:chromeOptions"]["debuggerAddress"], target)
        except Exception as exc:  # a dead driver, a refused DevTools socket, a missing capability
            self.close()
            raise BrowserError(f"Chromium started but does not answer: {exc}") from exc
        log.info("browser started in %.2fs (pid %s)", time.monotonic() - t0, self.driver_pid)

    @property
    def driver_pid(self) -> int | None:
        proc = getattr(getattr(self._driver, "service", None), "process", None)
        return proc.pid if proc is not None else None

    def close(self) -> None:
        """Quit the browser; kill whatever is left of its process group; drop the profile."""
        driver, self._driver = self._driver, None
        guard, self._guard = self._guard, None
        if guard is not None:
            guard.close()
        if driver is not None:
            with contextlib.suppress(*DEAD_ERRORS):
                driver.quit()
            self._cleanup_processes(driver.service)
        if self._profile:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = None
        if self._owner_lock is not None:
            os.close(self._owner_lock)
            self._owner_lock = None

    def restart(self, reason: str) -> None:
        if self.restarts >= self.max_restarts:
            self.close()
            raise BrowserError(f"browser died {self.restarts + 1} times; last: {reason}")
        self.restarts += 1
        log.warning("restarting browser (%d): %s", self.restarts, reason)
        self.close()
        self.start()

    @staticmethod
    def _cleanup_processes(service: Any) -> None:
        proc = getattr(service, "process", None)
        if proc is None:
            return
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            proc.wait(timeout=5)

    def alive(self) -> bool:
        if self._driver is None:
            return False
        try:
            self._driver.execute_script("return 1")
            return True
        except DEAD_ERRORS:
            return False

    # --- pages ----------------------------------------------------------------------
    def render(self, url: str, before_load: Any = None, allow: Callable[[str], bool] | None = None,
               interact: Any = None) -> RenderedPage:
        """Load ``url``, let scripts and lazy loaders run, and read images and links.

        ``before_load`` (a context manager factory, e.g. the politeness slot) wraps the whole
        render, so nothing else reaches the host meanwhile. ``allow`` decides which request URLs
        may leave the browser (default: all). ``interact`` (a site's :class:`~worker_scrape.sites.Interaction`)
        hovers or clicks the gallery's thumbnails before reading. A dead browser is restarted and
        the page tried once more.
        """
        for attempt in (1, 2):
            if self._driver is None:
                self.start()
            try:
                return self._render_once(url, before_load, allow or _allow_all, interact)
            except TimeoutException:
                with contextlib.suppress(*DEAD_ERRORS):
                    self.driver.execute_script("window.stop();")
                if self.alive():
                    raise PageError("timeout", url, code="page.timeout") from None
                self.restart(f"dead after timeout on {url}")
            except DEAD_ERRORS as exc:
                reason = (
                    str(exc).strip().splitlines()[0][:200]
                    if str(exc).strip()
                    else type(exc).__name__
                )
                if self.alive():
                    raise PageError(f"browser: {reason}", url, code="page.browser") from None
                if attempt == 2:
                    self.restart(f"died again on {url}: {reason}")
                    raise PageError(f"browser crashed twice: {reason}", url, code="page.browser_crashed") from None
                self.restart(f"died on {url}: {reason}")
        raise AssertionError("unreachable")

    def _render_once(self, url: str, before_load: Any, allow: Callable[[str], bool], interact: Any) -> RenderedPage:
        if before_load is None:
            return self._guarded(url, allow, interact)
        with before_load():
            return self._guarded(url, allow, interact)

    def _guarded(self, url: str, allow: Callable[[str], bool], interact: Any = None) -> RenderedPage:
        """Render with ``allow`` deciding what may leave the browser. Outside a render (the
        politeness slot) nothing may: a page's timers cannot reach its host between slots."""
        guard = self._guard
        assert guard is not None
        guard.take_blocked()  # what the last page tried after its slot: stopped, not counted
        guard.allow(allow)
        try:
            page = self._load_and_read(url, interact)
            page.blocked = guard.take_blocked()
            return page
        finally:
            guard.allow(_block_all)

    def _load_and_read(self, url: str, interact: Any = None) -> RenderedPage:
        driver = self.driver
        driver.get(url)
        deadline = time.monotonic() + min(5.0, self.config.page_timeout_s)
        while driver.execute_script("return document.readyState") != "complete":
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if self.config.scroll_steps:
            driver.execute_async_script(_SCROLL_JS, self.config.scroll_steps, 60)
        if self.config.settle_s:
            time.sleep(self.config.settle_s)
        interactions, interacted = 0, []
        if interact is not None:
            interactions, interacted = driver.execute_async_script(
                _INTERACT_JS, interact.selector, interact.action, interact.max_elements,
                int(1000 * min(interact.max_seconds, max(10.0, self.config.page_timeout_s) - 2)))
        data = driver.execute_script(_EXTRACT_JS, self.css_backgrounds)
        return RenderedPage(
            interactions=int(interactions or 0),
            interacted=[str(v) for v in interacted or [] if v],
            url=data["url"],
            base=data["base"] or data["url"],
            status=data.get("status"),
            title=data.get("title") or "",
            imgs=data.get("imgs") or [],
            singles=[s for s in data.get("singles") or [] if s],
            links=data.get("links") or [],
            meta_robots=data.get("meta_robots") or "",
            anchors=data.get("anchors") or [],
            data_attrs=data.get("data_attrs") or [],
            image_src=data.get("image_src") or [],
            ldjson=data.get("ldjson") or [],
            state=data.get("state") or [],
        )

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
