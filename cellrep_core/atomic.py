"""Files written whole or not at all: the bytes go to ``<name>.tmp`` beside the target, which is then renamed over
it (``os.replace``, atomic on one file system). A reader sees the previous file or the new one, never a part; a
kill leaves at most the ``.tmp``, which the next write replaces; a full disk raises ``DiskFullError`` naming the
file and keeps nothing. Reports (plots, HTML pages) and a model version's record go through here."""

from __future__ import annotations

import io
import os
from pathlib import Path

from cellrep_core import faults
from cellrep_core.errors import disk_full, is_disk_full


def write_bytes(path: Path | str, data: bytes, what: str = "a report", fault: str = "report_write") -> Path:
    """Write ``data`` to ``path`` atomically; ``fault``: the fault point reached between the write and the
    rename (``cellrep_core.faults``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if is_disk_full(err):
            raise disk_full(err, path, what) from err
        raise
    faults.point(fault)
    os.replace(tmp, path)
    return path


def write_text(path: Path | str, text: str, what: str = "a report", fault: str = "report_write") -> Path:
    """``write_bytes`` of UTF-8 text."""
    return write_bytes(path, text.encode("utf-8"), what, fault)


def save_figure(fig, path: Path | str, dpi: int = 90, **savefig_kw) -> Path:
    """Lay out a matplotlib figure, render it as PNG in memory, close it and write it atomically to ``path``."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=dpi, **savefig_kw)
    finally:
        plt.close(fig)
    return write_bytes(path, buf.getvalue(), f"the plot {Path(path).name}")
