"""``lmgd train --stage 0|1|2|3|4|all --config FILE``: register with :func:`add_parser`."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``train`` verb."""
    p = subparsers.add_parser(
        "train",
        help="train LMGenDrive stage by stage (resumes where it stopped)",
        description="Train the stages of a YAML recipe (see jobs/train_demo.yaml); "
        "rerunning resumes from the last saved state.",
    )
    p.add_argument(
        "--stage",
        required=True,
        help="0 (VAE), 1 (vision), 2 (single step), 3 (multi-step), "
        "4 (generator on its own rollouts) or all",
    )
    p.add_argument("--config", required=True, help="training recipe YAML")
    p.set_defaults(func=cmd_train)
    return p


def cmd_train(args: argparse.Namespace) -> int:
    from lmgendrive.train.backend import is_main_process
    from lmgendrive.train.config import load_config, parse_stage
    from lmgendrive.train.runner import run

    config = load_config(args.config)
    output = run(config, parse_stage(args.stage), command="lmgd " + " ".join(sys.argv[1:]))
    if is_main_process():
        print(
            f"trained stage(s) {args.stage} of {args.config}"
            + (f"; model in {output}" if output else "")
        )
    return 0
