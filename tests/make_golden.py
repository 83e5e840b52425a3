"""Write tests/data/golden_estimates.json: `estimate --json`'s figures for every golden model
(tests/golden_models.py) on every built-in hardware profile.

Run it from the repository root when an estimate changes on purpose (a new cost rule, new
block internals) and commit the file with that change:

    python tests/make_golden.py
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from autovit.latmodel.checks import dumps
    from autovit.latmodel.estimate import LatencyModel
    from autovit.latmodel.hardware import builtin_names, load_profile
    from autovit.latmodel.io import atomic_write_text
    from autovit.latmodel.sources import graph_for
    import autovit.nas  # noqa: F401 - registers the autovit: and architecture-file sources
    from tests.golden_models import GOLDEN, pinned_machine, priced, sources

    with pinned_machine():
        profiles = [load_profile(n) for n in builtin_names()]
    out: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, source in sources(Path(tmp)).items():
            model = LatencyModel(graph_for(source))
            out[name] = {p.name: priced(model.estimate(p).to_dict()) for p in profiles}
            print(f"{name}: {len(profiles)} profiles", file=sys.stderr)
    atomic_write_text(GOLDEN, dumps(out, indent=1) + "\n")
    print(f"wrote {GOLDEN}", file=sys.stderr)


if __name__ == "__main__":
    main()
