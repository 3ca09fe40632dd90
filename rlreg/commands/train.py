"""`rlreg train CONFIG [--resume RUN_DIR] [--dry-run]`: supervised stage, then RL, evaluated before
and after; --dry-run checks the config and prints where everything would run, starting nothing."""
from __future__ import annotations

import argparse

from rlreg.commands.report import print_results
from rlreg.config import load_config
from rlreg.rundir import RunDir


def run(args: argparse.Namespace) -> int:
    if args.resume:
        run_dir = RunDir.existing(args.resume, "--resume")
        # The run's own saved config wins; CONFIG only names what was run, overrides still apply.
        cfg = load_config(run_dir.config, [*args.overrides, f"run_dir={args.resume}"])
    else:
        cfg = load_config(args.config, args.overrides)
    if getattr(args, "dry_run", False):
        print("\n".join(describe_plan(cfg)))
        return 0
    from rlreg.train.pipeline import run_train

    print_results(run_train(cfg, resume=bool(args.resume)))
    return 0


def describe_plan(cfg) -> list[str]:
    """What a run of cfg would start and where (rlreg.device, rlreg.actors.placement, the sync
    route), from the config alone: no Ray, no engine, no learner."""
    from rlreg import device
    from rlreg.actors.placement import plan_for

    plan = plan_for(cfg)
    # learner.bf16 unset follows the start model's dtype: model.dtype for a model the run builds.
    bf16 = cfg.learner.bf16 if cfg.learner.bf16 is not None else cfg.model.dtype == "bfloat16"
    lines = [f"device: {'gpu (nccl)' if device.has_cuda() else 'cpu (gloo)'}; engine core "
             f"{device.engine_process(cfg.engine.process)}, eager {device.engine_enforce_eager(cfg.engine.enforce_eager)}",
             f"learner: {cfg.learner.world_size} rank(s), ZeRO-{cfg.learner.zero_stage}, bf16 {bf16}",
             f"engines: {cfg.rl.rollout_workers}; weight sync: {cfg.sync.resolved_route(cfg.data.input == 'vector')}",
             f"placement ({'colocated' if plan.colocated else 'separate'}, {plan.strategy}): {len(plan.bundles)} "
             f"bundle(s) {plan.bundles}"]
    lines += [f"  learner rank {r}: bundle {p.bundle}, {p.num_cpus:g} CPU, {p.num_gpus:g} GPU"
              for r, p in enumerate(plan.learners)]
    lines += [f"  engine {w}: {'bundle ' + str(p.bundle) if p.bundle is not None else 'outside the group'}, "
              f"{p.num_cpus:g} CPU, {p.num_gpus:g} GPU" for w, p in enumerate(plan.engines)]
    return lines
