"""Where a study's results go: ``bench-results/<name>.md``, ``.json`` and ``.png``, under a
name no earlier run took — a second run on the same day gets ``<name>-2``, never overwrites."""

import json
import os

from cryptfs.errors import DependencyError


def fresh_stem(out_dir: str, name: str) -> str:
    """``out_dir/name``, or ``name-2``, ``name-3``... if any file of that stem exists."""
    os.makedirs(out_dir, exist_ok=True)
    taken = {os.path.splitext(f)[0] for f in os.listdir(out_dir)}
    stem, n = name, 1
    while stem in taken:
        n += 1
        stem = f"{name}-{n}"
    return os.path.join(out_dir, stem)


def save(stem: str, markdown: str, data: dict, plot) -> None:
    """Write the report (with the plot linked), its data, and the plot (``plot(path)``)."""
    with open(stem + ".json", "w") as f:
        json.dump(data, f, indent=1)
    plot(stem + ".png")
    with open(stem + ".md", "w") as f:
        f.write(markdown + f"\n\n![plot]({os.path.basename(stem)}.png)\n")


def pyplot():
    """matplotlib's pyplot, drawing to files; DependencyError naming the extra to install if
    it is missing (plots are not part of the base install)."""
    try:
        import matplotlib
    except ImportError:
        raise DependencyError("plots need matplotlib: pip install 'cryptfs[bench]' "
                              "(make bench installs it)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
