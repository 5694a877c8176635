"""Reviewers, passwords, logins, script tokens and the slowing of repeated failed logins.

Passwords are hashed with argon2id (argon2-cffi). Session cookies and script tokens are random
256-bit values; only their sha256 is stored, so a copy of the database opens no session.
Failed logins are recorded in the database (``review_login_failures``), so the slow-down holds
across restarts and across several review servers on one database.

Names are folded (NFKC, then case-folded): ``alice``, ``Alice`` and ``ａｌｉｃｅ`` are one account.
A new reviewer is stored under the folded name, so the unique ``reviewers.name`` keeps two
spellings of one name apart even when they are added at once; names stored before folding
began are found by comparing their folded form (no schema change needed).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import math
import secrets
import unicodedata
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from common.core.errors import InputError
from common.core.settings import ReviewSettings
from common.store.rows import Reviewer, ReviewLoginFailure, ReviewSession, utcnow

NAME_MAX = 100
MIN_PASSWORD = 8
TOKEN_PREFIX = "spr_"
#: the one message for an unknown name and a wrong password alike
LOGIN_REFUSED = "Wrong username or password."

_hasher = PasswordHasher()
# verified against when the name is unknown, so both refusals take the same time
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def _aware(value: dt.datetime) -> dt.datetime:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def fold_name(name: str) -> str:
    """The form names are compared in: NFKC, case-folded (``Alice``, ``ａｌｉｃｅ`` -> ``alice``)."""
    # case folding can leave a string that NFKC changes again (as Unicode's NFKC_Casefold does)
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name.strip()).casefold())


def check_name(name: str) -> str:
    """The folded name, when it is 1-``NAME_MAX`` printable characters without spaces."""
    name = fold_name(name)
    if not name or len(name) > NAME_MAX or any(c.isspace() for c in name) or not name.isprintable():
        raise InputError(f"reviewer name {name!r}: 1-{NAME_MAX} printable characters, no spaces")
    return name


def find_reviewer(session: Session, name: str) -> Reviewer | None:
    """The reviewer ``name`` names: the one stored under exactly this name, else the one whose
    folded name is ``name``'s folded form (None when there is none, or several stored before
    names were folded)."""
    name = name.strip()
    if not name:
        return None
    exact = session.scalar(select(Reviewer).where(Reviewer.name == name))
    folded = fold_name(name)
    if exact is None and folded != name:
        exact = session.scalar(select(Reviewer).where(Reviewer.name == folded))
    if exact is not None:
        return exact
    matches = _folding_to(session, folded)
    return session.get(Reviewer, matches[0][0]) if len(matches) == 1 else None


def _folding_to(session: Session, folded: str) -> list[tuple[int, str]]:
    """(id, name) of the reviewers whose name folds to ``folded``; names stored before folding
    began may differ from their folded form, so this reads every name (a few rows)."""
    return [(i, n) for i, n in session.execute(select(Reviewer.id, Reviewer.name)) if fold_name(n) == folded]


def add_reviewer(session: Session, name: str, password: str, *, admin: bool = False) -> Reviewer:
    """A new reviewer, stored under the folded name; a name that folds to an existing one's or a
    password under ``MIN_PASSWORD`` characters is an ``InputError``."""
    given = name.strip()
    name = check_name(name)
    if len(password) < MIN_PASSWORD:
        raise InputError(f"password for {name}: at least {MIN_PASSWORD} characters")
    taken = sorted(n for _, n in _folding_to(session, name))
    if taken:
        same = "" if taken == [given] else (
            f" as {', '.join(taken)} (names are compared ignoring case and character width)")
        raise InputError(f"reviewer {given} exists already{same}")
    reviewer = Reviewer(name=name, password_hash=_hasher.hash(password), is_admin=admin)
    try:
        with session.begin_nested():
            session.add(reviewer)
            session.flush()
    except IntegrityError:
        raise InputError(f"reviewer {given} exists already") from None
    return reviewer


def new_token(session: Session, name: str) -> str:
    """A fresh script token for ``name`` (the previous one stops working); shown once."""
    reviewer = find_reviewer(session, name)
    if reviewer is None:
        raise InputError(f"no reviewer named {name} (add one with `synthpipe review add-reviewer {name}`)")
    token = TOKEN_PREFIX + new_secret()
    reviewer.token_hash = sha256_hex(token)
    reviewer.token_created_at = utcnow()
    return token


def reviewer_for_token(session: Session, token: str) -> Reviewer | None:
    if not token.startswith(TOKEN_PREFIX):
        return None
    return session.scalar(select(Reviewer).where(Reviewer.token_hash == sha256_hex(token)))


def verify_password(reviewer: Reviewer | None, password: str) -> bool:
    """True when ``password`` is ``reviewer``'s; an unknown reviewer costs the same time."""
    try:
        return _hasher.verify(reviewer.password_hash if reviewer else _DUMMY_HASH, password) and reviewer is not None
    except (VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True)
class Login:
    reviewer: Reviewer | None
    retry_after_s: float = 0.0  # > 0: refused unchecked, too many recent failures

    @property
    def ok(self) -> bool:
        return self.reviewer is not None


def login_wait(session: Session, name: str, address: str, settings: ReviewSettings) -> float:
    """Seconds before the next try for this name or address is looked at (0: now).

    Up to ``login_free_failures`` failures within ``login_window_s`` cost nothing; after that
    each try must wait ``login_backoff_s``, doubling with every further failure, up to
    ``login_backoff_max_s`` after the latest failure.
    """
    now = utcnow()
    since = now - dt.timedelta(seconds=settings.login_window_s)
    recent = or_(ReviewLoginFailure.name == name, ReviewLoginFailure.address == address)
    n_name = session.scalar(select(func.count()).where(ReviewLoginFailure.name == name,
                                                         ReviewLoginFailure.created_at >= since)) or 0
    n_addr = session.scalar(select(func.count()).where(ReviewLoginFailure.address == address,
                                                         ReviewLoginFailure.created_at >= since)) or 0
    n = max(n_name, n_addr)
    if n < settings.login_free_failures:
        return 0.0
    latest = session.scalar(select(func.max(ReviewLoginFailure.created_at))
                            .where(recent, ReviewLoginFailure.created_at >= since))
    if latest is None:
        return 0.0
    wait = min(settings.login_backoff_s * 2 ** (n - settings.login_free_failures), settings.login_backoff_max_s)
    left = (_aware(latest) + dt.timedelta(seconds=wait) - now).total_seconds()
    return max(0.0, left)


def attempt_login(session: Session, name: str, password: str, address: str, settings: ReviewSettings) -> Login:
    """Check a login; a failure is recorded (under the folded name, so every spelling of a name
    counts alike), and a try that comes too soon is not checked."""
    name = name.strip()[:NAME_MAX]
    key = fold_name(name)[:NAME_MAX]
    address = address[:64]
    wait = login_wait(session, key, address, settings)
    if wait > 0:
        return Login(None, retry_after_s=wait)
    reviewer = find_reviewer(session, name)
    if not verify_password(reviewer, password):
        session.add(ReviewLoginFailure(name=key, address=address))
        cutoff = utcnow() - dt.timedelta(seconds=settings.login_window_s)
        session.execute(delete(ReviewLoginFailure).where(ReviewLoginFailure.created_at < cutoff))
        return Login(None)
    assert reviewer is not None
    session.execute(delete(ReviewLoginFailure).where(ReviewLoginFailure.name == key))
    if _hasher.check_needs_rehash(reviewer.password_hash):
        reviewer.password_hash = _hasher.hash(password)
    return Login(reviewer)


def open_session(session: Session, reviewer: Reviewer, settings: ReviewSettings) -> tuple[str, ReviewSession]:
    """A new login for ``reviewer``: the cookie value (shown once) and its row."""
    cookie = new_secret()
    row = ReviewSession(token_hash=sha256_hex(cookie), reviewer_id=reviewer.id, csrf_token=new_secret(),
                        expires_at=utcnow() + dt.timedelta(seconds=settings.session_ttl_s))
    session.add(row)
    session.execute(delete(ReviewSession).where(ReviewSession.expires_at < utcnow()))
    session.flush()
    return cookie, row


def find_session(session: Session, cookie: str) -> tuple[Reviewer, ReviewSession] | None:
    row = session.scalar(select(ReviewSession).where(ReviewSession.token_hash == sha256_hex(cookie),
                                                     ReviewSession.expires_at > utcnow()))
    if row is None:
        return None
    reviewer = session.get(Reviewer, row.reviewer_id)
    return (reviewer, row) if reviewer is not None else None


def close_session(session: Session, cookie: str) -> None:
    session.execute(delete(ReviewSession).where(ReviewSession.token_hash == sha256_hex(cookie)))


def same_secret(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
