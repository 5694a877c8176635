"""The human review page: a keyboard-first web app and JSON API over the same store.

``app`` builds the web app from its routers: ``login`` (logging in and out), ``pages`` (the
queue and stats pages and their form posts), ``api`` (the JSON API for scripts) and ``images``
(an edit's images by id and slot). ``deps`` says who is calling (a session or a script token)
and checks CSRF tokens, ``middleware`` adds the security headers and caps request bodies,
``worklist`` parses the queue's filters and records decisions, and ``auth`` keeps reviewers,
logins, tokens and the slowing of failed logins. The queries themselves are in
``common.domain.review_queue``.
"""
