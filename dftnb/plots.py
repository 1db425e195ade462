"""Plot and table helpers shared by the notebooks: one seaborn theme, figures saved as PNG, tables as CSV + Markdown."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns


def setup(context: str = "notebook") -> None:
    """The one theme all chapters use."""
    sns.set_theme(context=context, style="whitegrid", palette="colorblind")


def save_figure(fig, name: str, out_dir: str | Path) -> Path:
    """Save ``fig`` as ``<out_dir>/figures/<name>.png`` (150 dpi) and return the path."""
    path = Path(out_dir) / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path


def save_table(df: pd.DataFrame, name: str, out_dir: str | Path, floatfmt: str = ".4g") -> Path:
    """Save ``df`` as ``<out_dir>/tables/<name>.csv`` and ``.md``; return the CSV path."""
    base = Path(out_dir) / "tables"
    base.mkdir(parents=True, exist_ok=True)
    df.to_csv(base / f"{name}.csv", index=False)
    (base / f"{name}.md").write_text(df.to_markdown(index=False, floatfmt=floatfmt) + "\n")
    return base / f"{name}.csv"


def close(fig) -> None:
    plt.close(fig)
