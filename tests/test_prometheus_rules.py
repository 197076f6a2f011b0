"""``deploy/prometheus/alerts.yml``, the alerting rules for those who run Alertmanager: promtool
(Debian's prometheus package) checks them and runs their unit tests
(``deploy/prometheus/alerts.test.yml``), and every metric they name is one ``/metrics`` serves."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from receiver.alerts import RULES as RECEIVER_RULES
from receiver.app import create_app
from receiver.clock import FakeClock
from tests.support import COMPLETED, app_client, post_signed, settings_for

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus"


@pytest.mark.prometheus
@pytest.mark.parametrize("command", [["check", "rules", "alerts.yml"],
                                     ["test", "rules", "alerts.test.yml"]])
def test_promtool_takes_the_rules_and_their_tests(promtool: Path, command: list[str]) -> None:
    done = subprocess.run([str(promtool), *command], cwd=RULES, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@pytest.mark.anyio
async def test_every_metric_the_rules_name_is_served(tmp_path: Path) -> None:
    clock = FakeClock(1_800_000_000.0)
    async with app_client(create_app(settings_for(tmp_path), clock=clock)) as client:
        await post_signed(client, COMPLETED, clock=clock, delivery_id="d-1")
        await post_signed(client, COMPLETED, clock=clock, secret="wrong", delivery_id="d-2")
        served = (await client.get("/metrics")).text
    # a sample's name, or a family's (a labelled counter nothing counted yet has no sample)
    names = set(re.findall(r"^(?:# TYPE )?(receiver_\w+)", served, re.MULTILINE))
    names |= {f"{name}_total" for name in names}
    named = set(re.findall(r"\b(receiver_\w+)", (RULES / "alerts.yml").read_text()))
    assert named
    assert named <= names, sorted(named - names)


def test_the_rules_name_every_alert_rule_of_the_receiver() -> None:
    text = (RULES / "alerts.yml").read_text()
    for rule in RECEIVER_RULES:
        words = "".join(part.capitalize() for part in rule.split("_"))
        assert f"SonicReceiver{words}" in text or f'rule="{rule}"' in text, rule

