"""Tests: unit, integration and the fakes of the outside services they run against."""
