"""The README's first command: the bundled demo scenario audits as documented."""

from __future__ import annotations

from .conftest import ROOT

EXPECTED = {
    "demoapp.tasks.export_report_with_subprocess": ("go", None),
    "demoapp.tasks.greet_user": ("go", None),
    "demoapp.tasks.record_signup": ("go", None),
    "demoapp.tasks.send_welcome_email": ("go", None),
    "demoapp.tasks.summarize_review": ("go", None),
    "demoapp.tasks.hash_passwords": ("no-go", "cpu-bound"),
    "demoapp.tasks.render_invoice_pdf": ("no-go", "cpu-bound"),
    "demoapp.tasks.nightly_shell_report": ("no-go", "blocking-call"),
    "demoapp.tasks.thumbnail_with_native_lib": ("no-go", "blocking-call"),
}


def test_demo_scenario_gives_the_documented_verdicts(audit) -> None:
    result = audit("--scenario", "scenarios/demo/scenario.toml", cwd=ROOT)
    assert result.returncode == 1, result.stderr
    got = {t["name"]: t for t in result.report["tasks"]}
    assert set(got) == set(EXPECTED)
    for name, (verdict, kind) in EXPECTED.items():
        assert got[name]["verdict"] == verdict, got[name]
        if kind:
            assert kind in {f["kind"] for f in got[name]["findings"]}, got[name]["findings"]
    # the services the I/O tasks waited on are named
    assert got["demoapp.tasks.send_welcome_email"]["services"].get("mail", 0) >= 5
    assert got["demoapp.tasks.summarize_review"]["services"].get("llm", 0) >= 5
    assert "io: llm" in result.stdout
