"""Test-only switches live in the tests (the probe in tests/helpers/probe, the fixtures), never in the package:
nothing under asc_ray/ reads an ASC_RAY_TEST_* variable or the four-stage switch of the makespan bench."""

from helpers.procs import ROOT


def test_the_package_reads_no_test_switch():
    offenders = [
        f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
        for p in sorted((ROOT / "asc_ray").rglob("*.py"))
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if "ASC_RAY_TEST_" in line or "ASC_RAY_FOUR_STAGE" in line or "ASC_RAY_PROBE" in line
    ]
    assert not offenders, "\n".join(offenders)
