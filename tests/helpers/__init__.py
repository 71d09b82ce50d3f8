"""Plain helpers shared by the test files (fixtures live in tests/conftest.py); no test file imports another."""
