"""Success rate of the scripted demonstrators (ALOHA, SO-100), replayed headless in joint space.

Each seed: plan the demo (waypoints -> IK at 50 Hz), then replay it as a follower would (every
20 ms write the joint targets, step 10 physics steps at 500 Hz) into a fresh MujocoWorld with
the same seed. Success = the task's last stage holds at the end of the episode; "max" is the
highest stage reached at any tick (ACT counts an episode by its highest reward). The interval
is Wilson's score interval at 95 %.
Run: python bench/scripted_success.py [--seeds 50] [--scene so100_lift]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from apprentice.teleop.scripted import SCRIPTS, ScriptedDemo, replay_headless


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (95 % at z = 1.96)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def run(scene: str, seeds: range) -> list[dict]:
    rows = []
    for seed in seeds:
        t0 = time.perf_counter()
        demo = ScriptedDemo(scene, seed)
        t1 = time.perf_counter()
        result = replay_headless(demo)
        t2 = time.perf_counter()
        step = max(np.abs(np.diff(p.targets[:, :-1], axis=0)).max() for p in demo.plans.values())
        rows.append(
            {
                "seed": seed,
                "success": result.final.success,
                "final": result.final,
                "max_stage": result.max_stage,
                "ik": demo.ik_converged,
                "step": float(step),
                "plan_s": t1 - t0,
                "replay_s": t2 - t1,
            }
        )
    return rows


def report(scene: str, rows: list[dict]) -> None:
    n = len(rows)
    ok = sum(r["success"] for r in rows)
    reached = sum(r["max_stage"] == r["final"].max_stage for r in rows)
    lo, hi = wilson(ok, n)
    print(
        f"\n{scene}, seeds {rows[0]['seed']}-{rows[-1]['seed']}: {ok}/{n} succeed at the end "
        f"({100 * ok / n:.0f} %, 95 % interval {100 * lo:.1f}-{100 * hi:.1f} %), {reached}/{n} "
        f"reach the last stage at some tick; IK converged on {sum(r['ik'] for r in rows)}/{n}"
    )
    print(
        f"  max joint step per 20 ms tick: {max(r['step'] for r in rows):.3f} rad; "
        f"plan {np.mean([r['plan_s'] for r in rows]):.2f} s, "
        f"replay {np.mean([r['replay_s'] for r in rows]):.2f} s per episode (mean)"
    )
    print(f"  {'seed':>4}  {'final stage':<18} {'max':>3}  {'ik':<5}")
    for r in rows:
        if not r["success"] or not r["ik"]:
            f = r["final"]
            print(f"  {r['seed']:>4}  {f.stage} {f.label:<16} {r['max_stage']:>3}  {r['ik']!s:<5}")
    if ok == n:
        print("  (no failures)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--scene", choices=sorted(SCRIPTS), action="append")
    args = parser.parse_args()
    for scene in args.scene or sorted(SCRIPTS):
        report(scene, run(scene, range(args.first_seed, args.first_seed + args.seeds)))


if __name__ == "__main__":
    main()
