"""The README's figures are what the code prints, to the digit (issue 28).

The README's quickstart command runs for real (the shipped config, the full run: about 100 s on 2 cores, once per
module), and the block after "At the end it prints" is compared with the run's summary: metric, checkpoint and
metrics-path lines exactly, the time and throughput lines as "about" (the same words, any number: they depend on
the machine and its load). On the same checkpoint the Evaluation section's figures (cached linear probe, offline
kNN) and the Quickstart's random-init kNN are checked, and the Tests section's test count against
``pytest --collect-only``.

The metrics are deterministic on a CPU: the same code, the same thread count (2, set here as on the project's
2-core machine) and the same CPU kind give the same digits. A change to the model, the losses, the data path, the
augmentation, a config or the torch version shifts them. Then rerun the commands and rewrite the figures with

    python tests/test_readme.py --update

(best on a quiet machine, since it writes the measured seconds too), review ``git diff README.md`` and commit it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
QUICKSTART = ["fit", "--config", str(ROOT / "configs/quickstart.yaml")]
CKPT = "runs/quickstart/checkpoints/last.ckpt"
PROBE = ["fit", "--config", str(ROOT / "configs/linear/quickstart.yaml"), "--model.checkpoint", CKPT]
KNN = ["validate", "--config", str(ROOT / "configs/knn/quickstart.yaml"), "--model.checkpoint", CKPT]
# the online kNN of the untrained model (validate refuses a pretraining config without weights unless asked)
RANDOM_INIT = ["validate", "--config", str(ROOT / "configs/quickstart.yaml"), "--untrained", "true"]

BLOCK = re.compile(r"(At the end it prints\n\n```\n)(.*?)(\n```)", re.S)
# "about" lines: the number in group 2 depends on the machine; the words around it must match.
TIMED = [re.compile(r"^(wcl: fit finished in )([0-9.]+)( s .*)$"),
         re.compile(r"^(wcl: training throughput )([0-9]+)( images/s .*)$")]
RANDOM_SENTENCE = re.compile(r"(untrained,\s+scores\s+kNN\s+top-1\s+)([0-9.]+)")
# Sentences may wrap anywhere: every space is \s+.
EVAL_SENTENCE = re.compile(r"(cached\s+linear\s+probe\s+)([0-9.]+)(\s+%\s+top-1\s+\(best\s+)([0-9.]+)(\s+%,\s+)(\d+)"
                           r"(\s+epochs,\s+)([0-9.]+)(\s+s\),\s+offline\s+kNN\s+)([0-9.]+)(\s+%)")
TEST_COUNT = re.compile(r"(runs\s+everything\s+—\s+)(\d+)(\s+tests)")


def wcl(args: list[str], cwd: Path) -> str:
    """stdout + stderr of ``python -m wcl ARGS`` run in ``cwd`` with this checkout's code on 2 threads."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-m", "wcl", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=1800)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"python -m wcl {' '.join(args)} failed:\n{out[-3000:]}"
    return out


def summary(out: str) -> list[str]:
    """The end-of-fit summary: the ``wcl:`` lines from the last "fit finished" on."""
    lines = out.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("wcl: fit finished in"))
    # stderr follows stdout in ``out``: its progress lines ("wcl: decoding …") are not part of the summary
    return [line.rstrip() for line in lines[start:] if line.startswith("wcl:") and not line.startswith("wcl: decoding")]


def summary_value(out: str, key: str) -> float:
    match = re.search(rf"^wcl: final {re.escape(key)} = ([0-9.]+)$", out, re.M)
    assert match, f"no 'wcl: final {key} = …' line in:\n{out[-2000:]}"
    return float(match.group(1))


def knn_value(out: str) -> float:
    """val/knn_top1 of a ``validate`` run: a ``wcl:`` line or Lightning's results table, whichever prints it."""
    match = re.search(r"val/knn_top1[^0-9\n]*([0-9]+\.[0-9]+)", out)
    assert match, f"no val/knn_top1 in:\n{out[-2000:]}"
    return float(match.group(1))


def readme_block(text: str) -> list[str]:
    match = BLOCK.search(text)
    assert match, "README.md has no ``` block after 'At the end it prints'"
    return match.group(2).splitlines()


def block_differences(readme: list[str], printed: list[str]) -> list[str]:
    """One message per line where the README's block and the printed summary disagree."""
    diffs = []
    for i in range(max(len(readme), len(printed))):
        said = readme[i] if i < len(readme) else "(nothing)"
        got = printed[i] if i < len(printed) else "(nothing)"
        timed = [(p.match(said), p.match(got)) for p in TIMED]
        same = any(a and b and (a.group(1), a.group(3)) == (b.group(1), b.group(3)) for a, b in timed) or said == got
        if not same:
            diffs.append(f"README says  {said}\n  the run printed {got}")
    return diffs


def sentence(pattern: re.Pattern, text: str, what: str) -> re.Match:
    match = pattern.search(text)
    assert match, f"README.md lost the sentence with {what} (pattern {pattern.pattern!r})"
    return match


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The README's commands, in a fresh folder: quickstart, then probe and offline kNN of its checkpoint."""
    cwd = tmp_path_factory.mktemp("readme")
    out = {"fit": wcl(QUICKSTART, cwd)}
    out["probe"] = wcl(PROBE, cwd)
    out["knn"] = wcl(KNN, cwd)
    out["random"] = wcl(RANDOM_INIT, cwd)
    return out


def probe_figures(runs: dict) -> list[str]:
    """The Evaluation sentence's figures as the README writes them (the seconds are 'about')."""
    fit = re.search(r"wcl: fit finished in ([0-9.]+) s \((\d+) steps, (\d+) epochs\)", runs["probe"])
    assert fit, runs["probe"][-2000:]
    return [f"{100 * summary_value(runs['probe'], 'val/top1'):.1f}",
            f"{100 * summary_value(runs['probe'], 'val/best_top1'):.1f}", fit.group(3), fit.group(1),
            f"{100 * knn_value(runs['knn']):.1f}"]


@pytest.mark.slow
def test_quickstart_block_is_what_the_run_prints(runs):
    diffs = block_differences(readme_block(README.read_text()), summary(runs["fit"]))
    assert not diffs, ("README's quickstart block is not what the run printed (python tests/test_readme.py "
                       "--update rewrites it):\n" + "\n".join(diffs))


@pytest.mark.slow
def test_evaluation_figures_are_what_the_runs_print(runs):
    match = sentence(EVAL_SENTENCE, README.read_text(), "the probe and offline-kNN figures")
    said = [match.group(g) for g in (2, 4, 6, 8, 10)]
    got = probe_figures(runs)
    names = ["probe top-1 %", "probe best %", "probe epochs", "probe seconds (about)", "offline kNN %"]
    diffs = [f"README says {name} {s}, the run printed {g}" for name, s, g in zip(names, said, got, strict=True)
             if s != g and "about" not in name]
    assert not diffs, "\n".join(diffs)
    assert float(got[3]) > 0


@pytest.mark.slow
def test_random_init_figure_is_what_validate_prints(runs):
    said = sentence(RANDOM_SENTENCE, README.read_text(), "the random-init kNN").group(2)
    got = f"{knn_value(runs['random']):.4f}"
    assert said == got, f"README says the untrained network scores kNN top-1 {said}, validate printed {got}"
    final = summary_value(runs["fit"], "val/knn_top1")
    assert final > float(got) + 0.05, f"the quickstart hardly learns: kNN {final:.4f} after training, {got} before"


def test_summary_prints_the_knn_curve(tmp_path, capsys):
    """The end-of-fit summary lists the kNN of every kNN epoch (the learning curve), as metrics.csv has them."""
    import csv

    from wcl.cli import main

    main([*QUICKSTART, "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
          "--data.train_per_class", "4", "--data.val_per_class", "2", "--data.batch_size", "20",
          "--data.num_workers", "0", "--model.width", "4", "--model.knn_every_n_epochs", "1",
          "--trainer.default_root_dir", str(tmp_path)])
    out = capsys.readouterr().out
    rows = csv.DictReader(open(tmp_path / "lightning_logs/version_0/metrics.csv"))
    logged = [(int(r["epoch"]) + 1, float(r["val/knn_top1"])) for r in rows if r.get("val/knn_top1")]
    assert [e for e, _ in logged] == [1, 2]
    expected = "wcl: val/knn_top1 by epoch: " + ", ".join(f"{e}: {v:.4f}" for e, v in logged)
    assert expected in summary(out), out[-2000:]


def collected_tests() -> int:
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", str(ROOT / "tests")], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    match = re.search(r"^(\d+) tests? collected", proc.stdout, re.M)
    assert match, proc.stdout[-2000:] + proc.stderr[-2000:]
    return int(match.group(1))


def test_readme_test_count_is_the_collected_count():
    said = int(sentence(TEST_COUNT, README.read_text(), "the test count").group(2))
    got = collected_tests()
    assert said == got, (f"README says pytest runs {said} tests, pytest --collect-only collects {got} "
                         "(python tests/test_readme.py --update rewrites it)")


def update() -> None:
    """Rerun the README's commands in a temporary folder and rewrite its figures from what they print."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        runs = {"fit": wcl(QUICKSTART, cwd), "probe": wcl(PROBE, cwd), "knn": wcl(KNN, cwd),
                "random": wcl(RANDOM_INIT, cwd)}
    text = README.read_text()
    text = BLOCK.sub(lambda m: m.group(1) + "\n".join(summary(runs["fit"])) + m.group(3), text, count=1)
    text = RANDOM_SENTENCE.sub(lambda m: m.group(1) + f"{knn_value(runs['random']):.4f}", text, count=1)
    top1, best, epochs, seconds, knn = probe_figures(runs)
    text = EVAL_SENTENCE.sub(lambda m: "".join([m.group(1), top1, m.group(3), best, m.group(5), epochs, m.group(7),
                                                seconds, m.group(9), knn, m.group(11)]), text, count=1)
    text = TEST_COUNT.sub(lambda m: m.group(1) + str(collected_tests()) + m.group(3), text, count=1)
    README.write_text(text)
    print("\n".join(summary(runs["fit"])))
    print(f"random init kNN {knn_value(runs['random']):.4f}; probe {top1} (best {best}, {epochs} epochs, {seconds} s); "
          f"offline kNN {knn}\nREADME.md rewritten: review git diff README.md")


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python tests/test_readme.py --update   (rewrites README.md's measured figures)")
    update()
