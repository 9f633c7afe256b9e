"""The docs cannot drift from the code: every `python -m ganlab...` command in the README and
docs/ composes (Hydra's own composition for the trainer, each CLI's argument parser for the rest)."""

from __future__ import annotations

import importlib
import re
import shlex

import pytest
from omegaconf import OmegaConf
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from conftest import REPO
from ganlab.core import config

DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
COMMAND = re.compile(r"python -m (ganlab\.\w+)((?:\\\n|[^\n`|#)])*)")


def documented_commands() -> list[tuple[str, str, list[str]]]:
    found = []
    for page in DOCS:
        for match in COMMAND.finditer(page.read_text()):
            args = shlex.split(match.group(2).replace("\\\n", " "))
            found.append((f"{page.relative_to(REPO)}: {match.group(0).strip()[:90]}", match.group(1), args))
    return found


COMMANDS = documented_commands()


def test_the_docs_hold_commands_of_every_cli():
    assert len(DOCS) >= 8
    assert {module for _, module, _ in COMMANDS} >= {"ganlab.train", "ganlab.evaluate", "ganlab.report", "ganlab.reproduce"}


def first_job(overrides: list[str]) -> list[str]:
    """A sweep's first combination: `dropout=0.1,0.3` -> `dropout=0.1`; search spaces are left to the sweeper."""
    concrete = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if not override.is_sweep_override():
            concrete.append(override.input_line)
        elif not override.is_interval_sweep():
            key = override.input_line.split("=", 1)[0]
            concrete.append(f"{key}={next(override.sweep_string_iterator())}")
    return concrete


def compose_train(args: list[str]):
    config_dir, config_name, overrides = REPO / "conf", "train", []
    words = iter(args)
    for word in words:
        if word == "-cd":  # like the CLI's --config-dir: the primary config from there, conf/ still searched
            config_dir = REPO / next(words)
            overrides.append(f"hydra.searchpath=[file://{REPO / 'conf'}]")
        elif word == "-cn":
            config_name = next(words)
        elif word == "--cfg":
            next(words)
        elif not word.startswith("-"):
            overrides.append(word)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose(config_name=config_name, overrides=first_job(overrides), return_hydra_config=True)


@pytest.mark.parametrize(("where", "module", "args"), COMMANDS, ids=[where for where, _, _ in COMMANDS])
def test_every_documented_command_composes(where, module, args):
    if module == "ganlab.train":
        cfg = compose_train(args)
        config.validate(OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"]))
    else:
        cli = importlib.import_module(module)
        cli.parse_args(args)  # argparse exits non-zero on an unknown option or a bad value
