"""The human review page: a keyboard-first web app and JSON API over the same store.

``app`` (the web app), ``auth`` (reviewers, logins, tokens, throttling), ``queries`` (the queue
and recording decisions), ``agreement`` (reviewer and AI-vs-human agreement) and ``final``
(the decision export and training use: people's majority where reviewed, the AI's otherwise).
"""
