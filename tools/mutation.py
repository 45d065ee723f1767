"""Mutation testing of the method's core: ``make mutation`` (not part of CI; about 6 minutes on 2
cores). The files mutated and the tests run are in pyproject.toml, ``[tool.mutmut]``; the score
and every survivor, with why it lives, are in docs/testing.md.

    python tools/mutation.py run          # every mutant (resumes where a stopped run left off)
    python tools/mutation.py results      # the survivors
    python tools/mutation.py show NAME    # one mutant's diff
    python tools/mutation.py score        # killed / total over the mutated files, per file

mutmut 3 runs each mutant in a fork of a process that imported torch once, and only the fast
tests that cover the mutated function: a second or so a mutant. It takes a top-level folder named
``src`` for a layout folder and strips ``src.`` from module names, where ours is a package named
``src``; the two name functions are given the whole names here, and nothing else of mutmut changes.
"""
import os
import sys
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def keep_src_in_names():
    """mutmut's mutant names and trampoline records, with the package name ``src.`` kept."""
    import mutmut.__main__ as main
    from mutmut.configuration import config
    from mutmut.mutation import file_mutation, trampoline
    from mutmut.state import state

    def get_mutant_name(relative_source_path, mutant_method_name):
        module = str(relative_source_path)[:-len(relative_source_path.suffix)].replace(os.sep, ".")
        return f"{module}.{mutant_method_name}".replace(".__init__.", ".")

    def record_trampoline_hit(name, caller=None):  # mutmut's own, for max_stack_depth -1 (its default)
        state()._stats.add(name)
        if caller is not None and config().track_dependencies:
            state().function_dependencies[name].add(caller)

    main.get_mutant_name = file_mutation.get_mutant_name = get_mutant_name
    trampoline.record_trampoline_hit = record_trampoline_hit


def score():
    """Per mutated file: mutants killed (a test failed, or the mutant hung or crashed) of all."""
    import json

    from mutmut.stats import status_by_exit_code
    detected = {"killed", "timeout", "segfault"}
    counts = {}
    for folder, _, files in os.walk(os.path.join(ROOT, "mutants", "src")):
        for f in sorted(files):
            if f.endswith(".meta"):
                with open(os.path.join(folder, f)) as fh:
                    codes = json.load(fh)["exit_code_by_key"].values()
                name = os.path.relpath(os.path.join(folder, f), os.path.join(ROOT, "mutants"))[:-len(".meta")]
                counts[name] = Counter(status_by_exit_code[c] for c in codes)
    killed = total = 0
    for name, c in sorted(counts.items()):
        k, n = sum(c[s] for s in detected), sum(c.values())
        killed, total = killed + k, total + n
        others = ", ".join(f"{v} {s}" for s, v in sorted(c.items()) if s not in detected)
        print(f"{name:34s} {k:4d} of {n:4d} killed  {others}")
    print(f"{'all':34s} {killed:4d} of {total:4d} killed = {killed / max(1, total):.1%}")


if __name__ == "__main__":
    os.chdir(ROOT)
    os.environ["SSD_TEST_THREADS"] = "1"  # the tests run in forks: OpenMP's thread pool would hang there
    os.environ["OMP_NUM_THREADS"] = "1"
    if sys.argv[1:] == ["score"]:
        score()
        sys.exit(0)
    keep_src_in_names()
    from mutmut.__main__ import cli
    sys.exit(cli())
