"""Test doubles at the network edge only: a loopback HTTP server speaking the providers' REST
shapes, driven by the real SDK clients."""
from tests.fakes.answers import deterministic_answer, expected_answer
from tests.fakes.server import FAKE_KEY, FAULTS, FakeProviderServer

__all__ = ["FakeProviderServer", "FAULTS", "FAKE_KEY", "expected_answer", "deterministic_answer"]
