""""Did you mean": a misspelt knob is named with its nearest real one, by the real CLI, before Hydra's advice."""

from __future__ import annotations

from conftest import run_cli
from ganlab.core.knob_names import misspelt


def test_a_misspelt_knob_is_answered_with_the_one_it_resembles(workdir):
    result = run_cli(["dropuot=0.1", "epochs=1"], workdir)
    assert result.returncode == 1
    assert "did you mean dropout?" in result.stderr and "+dropuot" not in result.stderr
    assert "Traceback" not in result.stderr and not (workdir / "outputs").exists()  # refused before anything ran


def test_keys_are_judged_against_the_chosen_groups_and_real_knobs_pass():
    assert misspelt(["model=dcgan", "dropout=0.1", "optimizer.lr=0.1", "loss=hinge,ns", "hydra/launcher=parallel"]) == []
    (line,) = misspelt(["eval.num_sampels=300"])
    assert "did you mean eval.num_samples?" in line
    assert misspelt(["xyzzy=1"]) == []  # nothing close: Hydra's own message
    assert misspelt(["-cn", "search", "dropuot=1"]) == []  # another config: Hydra judges
