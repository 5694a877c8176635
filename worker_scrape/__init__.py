"""Scrape stage: site hierarchy and weighted sampling, robots.txt, URL rules, the
headless-browser crawler and the image fetcher.

Importing this package is cheap: Selenium is only imported by ``worker_scrape.browser``
(and so ``worker_scrape.crawler``).
"""
