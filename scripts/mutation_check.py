"""Mutation check of the privacy and secure-aggregation code: does the test suite notice when it breaks?

    python scripts/mutation_check.py [--only NAME ...] [--list]

Each mutation below breaks one privacy or secure-aggregation behaviour on purpose (noise off,
clipping off, the accountant step not recorded, a server check skipped, the secret key written into
the server's context, ...). For each, the script copies the checkout into a temporary folder,
applies the mutation there (the working tree is never touched), runs the tests that should notice,
and reports the mutation as *killed* (some test failed) or *survived* (all passed: a gap in the
tests). It first runs the same tests unmutated, which must pass. Exit code 0 when every mutation is
killed, 1 otherwise. Takes a few minutes on 2 cores (the unit tests only; no simulation).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    """Replace ``original`` (which must occur exactly once in ``path``) by ``mutated``; ``tests`` should fail."""

    name: str
    path: str
    original: str
    mutated: str
    tests: tuple[str, ...]


MUTATIONS = (
    Mutation(
        "noise off (default bk clipping)",
        "pipeline/privacy/engine.py",
        "engine, model, optimizer, criterion, loader, plan.noise_multiplier, plan.max_grad_norm",
        "engine, model, optimizer, criterion, loader, 0.0, plan.max_grad_norm",
        ("tests/privacy/test_noise.py",),
    ),
    Mutation(
        "noise off (Opacus clipping modes)",
        "pipeline/privacy/engine.py",
        "            noise_multiplier=plan.noise_multiplier,\n",
        "            noise_multiplier=0.0,\n",
        ("tests/privacy/test_noise.py",),
    ),
    Mutation(
        "clipping off (bk)",
        "pipeline/privacy/bk_clipping.py",
        "factors = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)",
        "factors = torch.ones_like(norms)",
        ("tests/privacy/test_bk_clipping.py", "tests/analysis/test_attacks.py"),
    ),
    Mutation(
        "DP randomness seeded from the config",
        "pipeline/privacy/randomness.py",
        "return TorchRandomness(kind, secrets.randbits(63))",
        "return TorchRandomness(kind, int(seed) + int(hospital) + int(rnd))",
        ("tests/privacy/test_randomness.py", "tests/flower/test_client_app.py"),
    ),
    Mutation(
        "lifetime cap not enforced",
        "pipeline/flower/hospital.py",
        "if would <= cap * (1 + BUDGET_SLACK):",
        "if True:",
        ("tests/flower/test_client_app.py",),
    ),
    Mutation(
        "accountant step not recorded",
        "pipeline/privacy/engine.py",
        "    engine.accountant = ledger.accountant  # steps are recorded straight into the ledger\n",
        "",
        ("tests/privacy/test_privacy.py", "tests/privacy/test_noise.py", "tests/flower/test_client_app.py"),
    ),
    Mutation(
        "cached noise multiplier used unverified",
        "pipeline/privacy/plan.py",
        "        if epsilon - EPSILON_TOLERANCE <= spent <= epsilon:\n",
        "        if True:\n",
        ("tests/privacy/test_plan.py",),
    ),
    Mutation(
        "budget never refused",
        "pipeline/privacy/ledger.py",
        "return self.epsilon_after_round(plan) <= plan.target_epsilon * (1 + BUDGET_SLACK)",
        "return True",
        ("tests/privacy/test_privacy.py", "tests/flower/test_client_app.py"),
    ),
    Mutation(
        "digest check skipped",
        "pipeline/secagg/server_sum.py",
        "if digest(payload.chunks) != payload.digest:",
        "if False:",
        ("tests/secagg/test_secagg.py",),
    ),
    Mutation(
        "chunk count not checked",
        "pipeline/secagg/server_sum.py",
        "if len(payload.chunks) != self.num_chunks:",
        "if False:",
        ("tests/secagg/test_secagg.py",),
    ),
    Mutation(
        "secret key serialised into the server context",
        "pipeline/secagg/keys.py",
        "save_public_key=False, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)\n\n\n@",
        "save_public_key=False, save_secret_key=True, save_galois_keys=False, save_relin_keys=False)\n\n\n@",
        ("tests/secagg/test_secagg.py",),
    ),
    Mutation(
        "duplicate reply added twice",
        "strategies/secure_fedavg.py",
        "if node in tally.seen:",
        "if False:",
        ("tests/strategies/test_secure_fedavg.py",),
    ),
    Mutation(
        "non-finite update encrypted and sent",
        "pipeline/flower/hospital.py",
        "if not np.all(np.isfinite(change)):",
        "if False:",
        ("tests/flower/test_client_app.py",),
    ),
    Mutation(
        "round check of an aggregate not verified",
        "pipeline/secagg/codec.py",
        "if not np.array_equal(counted, count * check):",
        "if False:",
        ("tests/secagg/test_masking.py",),
    ),
    Mutation(
        "aggregate of fewer than min_hospitals opened",
        "pipeline/secagg/codec.py",
        "if count < min_hospitals:",
        "if False:",
        ("tests/secagg/test_masking.py",),
    ),
    Mutation(
        "pair masks not added",
        "pipeline/secagg/masks.py",
        "        out = (out + mask) & modulus if pair_sign(me, other) > 0 else (out - mask) & modulus\n",
        "        out = out\n",
        ("tests/secagg/test_masking.py",),
    ),
    Mutation(
        "a second survivor set unmasked (the retry trap)",
        "pipeline/secagg/protocol.py",
        "if tag in answered and answered[tag] != survivors:",
        "if False:",
        ("tests/secagg/test_masking.py",),
    ),
    Mutation(
        "hospital runs any _target_ the server names",
        "pipeline/config/trust.py",
        "    if bad:\n",
        "    if False:\n",
        ("tests/flower/test_secure_federation.py",),
    ),
    Mutation(
        "server imports the key module",
        "strategies/secure_fedavg.py",
        "from pipeline.secagg.wire import Payload\n",
        "from pipeline.secagg.wire import Payload\nfrom pipeline.secagg import keys as _keys  # noqa: F401\n",
        ("tests/secagg/test_boundary.py",),
    ),
)


def check_definitions(root: Path = ROOT) -> list[str]:
    """Problems with the mutation list itself: an ``original`` that does not occur exactly once."""
    problems = []
    for m in MUTATIONS:
        count = (root / m.path).read_text().count(m.original)
        if count != 1:
            problems.append(f"{m.name}: its original text occurs {count} times in {m.path} (expected once)")
    return problems


def _copy_checkout(dest: Path) -> None:
    ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "outputs", "multirun", "build")
    shutil.copytree(ROOT, dest, ignore=ignore, symlinks=True)


def _run_tests(tree: Path, tests: tuple[str, ...]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-m", "not e2e", "-p", "no:cacheprovider", *tests]
    return subprocess.run(cmd, cwd=tree, capture_output=True, text=True, timeout=1200)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", default=None, help="run only mutations whose name contains one of these")
    p.add_argument("--list", action="store_true", help="list the mutations and exit")
    a = p.parse_args(argv)
    chosen = [m for m in MUTATIONS if a.only is None or any(s in m.name for s in a.only)]
    if a.list:
        for m in MUTATIONS:
            print(f"{m.name}: {m.path} -> {' '.join(m.tests)}")
        return 0
    problems = check_definitions()
    if problems:
        print("error: " + "; ".join(problems), file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="fedmed-mutants-") as tmp:
        tree = Path(tmp) / "checkout"
        _copy_checkout(tree)
        all_tests = tuple(sorted({t for m in chosen for t in m.tests}))
        print(f"baseline: {len(all_tests)} test files, unmutated ...", flush=True)
        baseline = _run_tests(tree, all_tests)
        if baseline.returncode != 0:
            print(f"error: the tests fail without any mutation:\n{baseline.stdout[-2000:]}", file=sys.stderr)
            return 2
        survived = []
        print("| mutation | file | tests | result | seconds |\n|---|---|---|---|---|")
        for m in chosen:
            target = tree / m.path
            original = target.read_text()
            target.write_text(original.replace(m.original, m.mutated))
            t0 = time.perf_counter()
            try:
                done = _run_tests(tree, m.tests)
            finally:
                target.write_text(original)
            killed = done.returncode != 0
            if not killed:
                survived.append(m.name)
            result = "killed" if killed else "**SURVIVED**"
            tests = ", ".join(Path(t).name for t in m.tests)
            print(f"| {m.name} | {m.path} | {tests} | {result} | {time.perf_counter() - t0:.0f} |", flush=True)
    if survived:
        print(f"\n{len(survived)} of {len(chosen)} mutations survived: {', '.join(survived)}")
        return 1
    print(f"\nall {len(chosen)} mutations killed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
