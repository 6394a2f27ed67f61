"""Expectation suites per dataset and the Great Expectations validation runner."""
