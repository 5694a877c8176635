"""The tests' shared fixtures live in tests/fixtures/ and load here as pytest plugins; test
folders mirror the packages they test (tests/core, tests/store, ..., tests/worker_scrape, ...)."""

pytest_plugins = [
    "fixtures.databases",
    "fixtures.models",
    "fixtures.redis",
    "fixtures.cluster",
    "fixtures.s3",
    "fixtures.vllm",
]
