"""The README's main command runs end to end: node up, one question, streamed answer."""

import os
import random
import subprocess

from support import REPO


def test_demo_streams_an_answer_and_exits_cleanly():
    env = dict(os.environ, ROS_DOMAIN_ID=str(random.randint(1, 101)))
    proc = subprocess.run(
        ["bash", os.path.join(REPO, "scripts", "demo.sh"), "Name three colors.",
         "--max-new-tokens", "12"],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert out.startswith("Q: Name three colors.\nA: ")
    answer = out.split("A: ", 1)[1].split("\n[stats]", 1)[0]
    assert len(answer.strip()) > 3
    stats = out.split("[stats]", 1)[1]
    assert "prompt tokens" in stats and "generated" in stats and "tokens/s" in stats
    assert "configured" in proc.stderr and "engine freed" in proc.stderr
