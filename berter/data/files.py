"""Task data files: read and validate CS224N / GLUE files, hold out a calibration slice, download.
A data directory holds files in one (or both) of two layouts. Only train and dev are used.

CS224N default final project (tab-separated, header row, unnamed leading index column,
fields may be CSV-quoted):
    <dir>/ids-sst-{train,dev}.csv   id  sentence  sentiment        (0-4)
    <dir>/quora-{train,dev}.csv     id  sentence1  sentence2  is_duplicate  (0/1, also 0.0/1.0)
    <dir>/sts-{train,dev}.csv       id  sentence1  sentence2  similarity    (0-5)

GLUE, one sub-folder per task as in the official download (tab-separated, header row, no
quoting: quote characters are literal text):
    <dir>/SST-2/{train,dev}.tsv     sentence  label
    <dir>/QQP/{train,dev}.tsv       id  qid1  qid2  question1  question2  is_duplicate
    <dir>/MRPC/{train,dev}.tsv      Quality  #1 ID  #2 ID  #1 String  #2 String
    <dir>/STS-B/{train,dev}.tsv     index ... sentence1  sentence2  score
    <dir>/RTE/{train,dev}.tsv       index  sentence1  sentence2  label  (entailment=1, not_entailment=0)

`python -m berter.data download [DIR]` fetches these; `python -m berter.data check DIR` validates.

Malformed input raises DataError with one line naming the file, the data row (1-based,
header not counted) or file line, and the problem. One tolerance: quora rows with an empty
label are skipped with a warning, because the public quora-train.csv has two such rows
(broken quoting) and the CS224N reference loader drops them too.

load_data: `max_train` keeps a seeded random subset of the train file (in file order), then
the calibration slice is carved out of that subset, so calib + train == the capped train set.
`max_dev` is a seeded random subset of the dev file.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import random
import re
import sys
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from berter.config import Config
from berter.errors import ArgumentParser, BerterError, ConfigError, DataError
from berter.tasks import TASKS, Example, Task, get_task

log = logging.getLogger(__name__)

CS224N_TASKS = ("sst", "para", "sts")


CS224N_URL = "https://raw.githubusercontent.com/gpoesia/minbert-default-final-project/main/data/"
GLUE_URL = "https://dl.fbaipublicfiles.com/glue/data/"
SENTEVAL_URL = "https://dl.fbaipublicfiles.com/senteval/senteval_data/"  # MRPC source files
GLUE_ZIPS = {"sst2": "SST-2.zip", "qqp": "QQP-clean.zip", "stsb": "STS-B.zip", "rte": "RTE.zip"}



def _download_hint(task: Task, data_dir: Path) -> str:
    return f"fetch it with `python -m berter.data download {data_dir} --tasks {task.name}`"


def _read_table(path: Path, task: Task, data_dir: Path) -> pd.DataFrame:
    """Read one tab-separated file as strings, turning parser failures into one-line errors."""
    if not path.is_file():
        raise DataError(f"{path}: missing file; {_download_hint(task, data_dir)}")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            header = f.readline()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    if not header:
        raise DataError(f"{path}: empty file (0 bytes)")
    needed = [c for c in (task.id_col, *task.text_cols, task.label_col) if c]
    if "\t" not in header:
        hint = " (the header looks comma-separated)" if "," in header else ""
        raise DataError(f"{path}: line 1: expected tab-separated columns {', '.join(needed)}{hint}")
    kwargs: dict = dict(sep="\t", dtype=str, keep_default_na=False, encoding="utf-8-sig")
    if not task.quoted:
        kwargs["quoting"] = csv.QUOTE_NONE
    if task.label_last:  # GLUE STS-B: keep the columns in place, take the score from the end
        width = len(header.rstrip("\r\n").split("\t"))
        kwargs.update(engine="python", on_bad_lines=lambda f: f[: width - 1] + [f[-1]])
    try:
        df = pd.read_csv(path, **kwargs)
    except pd.errors.ParserError as e:
        m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(e))
        problem = (
            f"line {m[2]}: expected {m[1]} tab-separated fields, saw {m[3]}"
            if m
            else str(e).strip().splitlines()[-1]
        )
        raise DataError(f"{path}: {problem}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    missing = [c for c in needed if c not in df.columns]
    if missing:
        found = ", ".join(str(c) for c in df.columns)
        raise DataError(f"{path}: line 1: missing column(s) {', '.join(missing)} (found: {found})")
    if len(df) == 0:
        raise DataError(f"{path}: no data rows (header only)")
    return df


def _parse_label(raw: str, task: Task) -> float:
    """The label as a number, or ValueError with the problem in words."""
    if task.label_map is not None:
        if raw not in task.label_map:
            raise ValueError(f"label {raw!r} is not one of {', '.join(task.label_map)}")
        return float(task.label_map[raw])
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"label {raw!r} in column {task.label_col!r} is not a number") from None
    lo, hi = task.label_range
    if task.is_regression:
        if not lo <= value <= hi:
            raise ValueError(f"label {raw} is out of range (expected {lo:g} to {hi:g})")
    elif not (value.is_integer() and lo <= value <= hi):
        raise ValueError(f"label {raw} is out of range (expected an integer {lo:g} to {hi:g})")
    return value


def read_task(task: Task, data_dir: str | Path, split: str) -> list[Example]:
    """Read and validate one split of a task; any problem raises a one-line DataError."""
    if split not in task.files:
        raise DataError(f"task {task.name} has no {split!r} split (has: {', '.join(task.files)})")
    data_dir = Path(data_dir)
    path = data_dir / task.files[split]
    df = _read_table(path, task, data_dir)

    n = len(df)
    ids = df[task.id_col].tolist() if task.id_col else [str(i + 1) for i in range(n)]
    texts = [df[c].tolist() for c in task.text_cols]
    labels = df[task.label_col].tolist()
    header = [c for c in (task.id_col, *task.text_cols, task.label_col) if c]
    columns = ([ids] if task.id_col else []) + texts + [labels]

    examples: list[Example] = []
    seen: dict[str, int] = {}
    skipped: list[int] = []
    for i in range(n):
        row = i + 1
        if all(col[i] == name for col, name in zip(columns, header, strict=True)):
            raise DataError(f"{path}: row {row}: repeats the header row")
        raw = labels[i].strip()
        if not raw and task.skip_unlabelled:
            skipped.append(row)
            continue
        try:
            label = _parse_label(raw, task)
        except ValueError as e:
            raise DataError(f"{path}: row {row}: {e}") from None
        fields = [t[i].strip() for t in texts]
        for name, text in zip(task.text_cols, fields, strict=True):
            if not text:
                raise DataError(f"{path}: row {row}: empty text in column {name!r}")
        ex_id = ids[i].strip()
        if not ex_id:
            raise DataError(f"{path}: row {row}: empty id in column {task.id_col!r}")
        if ex_id in seen:
            raise DataError(
                f"{path}: row {row}: duplicate id {ex_id!r} (first at row {seen[ex_id]})"
            )
        seen[ex_id] = row
        examples.append(Example(ex_id, fields[0], fields[1] if task.is_pair else None, label))
    if skipped:
        shown = ", ".join(map(str, skipped[:5])) + (" ..." if len(skipped) > 5 else "")
        log.warning(
            "%s: skipped %d row(s) with an empty label (rows %s)", path, len(skipped), shown
        )
    if not examples:
        raise DataError(f"{path}: no labelled rows")
    return examples


def find_layout(data_dir: str | Path) -> list[str]:
    """Names of the tasks whose train and dev files are all present in data_dir."""
    root = Path(data_dir)
    return [t.name for t in TASKS.values() if all((root / f).is_file() for f in t.files.values())]


# ----------------------------------------------------------------------------- splits
@dataclass
class TaskSplits:
    task: Task
    train: list[Example]
    dev: list[Example]
    calib: list[Example]  # held out from train to choose exit thresholds; never trained on


@dataclass
class MultitaskData:
    source: str  # "demo" or the resolved data directory
    is_demo: bool
    splits: dict[str, TaskSplits]  # in the order the tasks were asked for


def _subset(examples: list[Example], cap: int | None, rng: random.Random) -> list[Example]:
    """A seeded random subset of at most cap examples, kept in their original order."""
    if cap is None or cap >= len(examples):
        return examples
    keep = sorted(rng.sample(range(len(examples)), cap))
    return [examples[i] for i in keep]


def load_data(
    data_dir: str | Path | None,
    tasks: Sequence[str],
    max_train: int | None = None,
    max_dev: int | None = None,
    seed: int = 0,
    calib_fraction: float = 0.1,
    calib_max: int = 500,
) -> MultitaskData:
    """Load train/dev/calib for each task from a data dir, or the demo set for None/"demo"."""
    names = [t for t in tasks.split(",") if t] if isinstance(tasks, str) else list(tasks)
    for name in names:
        get_task(name)
    if len(set(names)) != len(names):
        raise ConfigError(f"tasks has duplicates: {', '.join(names)}")
    if not 0 <= calib_fraction < 1:
        raise ConfigError(f"calib_fraction must be in [0, 1), got {calib_fraction}")
    if calib_max < 0:
        raise ConfigError(f"calib_max must be >= 0, got {calib_max}")

    is_demo = data_dir is None or str(data_dir) == "demo"
    root = None
    if not is_demo:
        root = Path(data_dir).expanduser().resolve()
        if not root.exists():
            raise DataError(
                f"{root}: data directory does not exist; fetch the data with "
                f"`python -m berter.data download {root}` or use the demo data (data_dir=None)"
            )
        if not root.is_dir() or not os.access(root, os.R_OK | os.X_OK):
            raise DataError(f"{root}: not a readable directory")

    splits: dict[str, TaskSplits] = {}
    for name in names:
        task = TASKS[name]
        if is_demo:
            from berter.data.demo import demo_examples  # demo imports Example from here

            train, dev = demo_examples(name, "train"), demo_examples(name, "dev")
        else:
            train, dev = read_task(task, root, "train"), read_task(task, root, "dev")
        train = _subset(train, max_train, random.Random(f"{seed}/{name}/max_train"))
        dev = _subset(dev, max_dev, random.Random(f"{seed}/{name}/max_dev"))
        n_calib = min(calib_max, round(calib_fraction * len(train)))
        held = set(random.Random(f"{seed}/{name}/calib").sample(range(len(train)), n_calib))
        calib = [ex for i, ex in enumerate(train) if i in held]
        train = [ex for i, ex in enumerate(train) if i not in held]
        if not train:
            raise DataError(f"task {name}: no training examples left after the calibration slice")
        splits[name] = TaskSplits(task, train, dev, calib)
    return MultitaskData("demo" if is_demo else str(root), is_demo, splits)


def load_data_for(cfg: Config) -> MultitaskData:
    """The data a config names: its directory, tasks, caps, seed and calibration slice."""
    return load_data(
        cfg.data_dir, cfg.tasks, max_train=cfg.max_train, max_dev=cfg.max_dev, seed=cfg.seed,
        calib_fraction=cfg.calib_fraction, calib_max=cfg.calib_max,
    )  # fmt: skip



# ----------------------------------------------------------------------------- download CLI
def _fetch(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.read()
    except urllib.error.HTTPError as e:
        raise DataError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise DataError(f"{url}: cannot fetch: {getattr(e, 'reason', e)}") from None


def _write_atomic(path: Path, data: bytes, source: str) -> None:
    """Write via a temporary file and rename, so an interrupted download leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"wrote {path} ({len(data):,} bytes) from {source}")


def _mrpc_files(train_txt: bytes, dev_ids: bytes) -> dict[str, bytes]:
    """GLUE's MRPC train/dev split of the MSR paraphrase training file, as GLUE builds it."""
    lines = train_txt.decode("utf-8-sig").splitlines(keepends=True)
    dev_pairs = {
        tuple(r.strip().split("\t")[:2]) for r in dev_ids.decode().splitlines() if r.strip()
    }
    train, dev = [lines[0]], [lines[0]]
    for line in lines[1:]:
        if line.strip():
            fields = line.split("\t")
            (dev if tuple(fields[1:3]) in dev_pairs else train).append(line)
    return {"train": "".join(train).encode(), "dev": "".join(dev).encode()}


def download(
    data_dir: str | Path = "data",
    tasks: Sequence[str] = CS224N_TASKS,
    base_url: str | None = None,
    force: bool = False,
) -> None:
    """Fetch task files into data_dir; existing files are kept unless force.

    base_url replaces every public host (a mirror holding the CS224N csv files, the GLUE zips,
    msr_paraphrase_train.txt and mrpc_dev_ids.tsv side by side).
    """
    root = Path(data_dir)

    def url(default: str, name: str) -> str:
        base = base_url or default
        return base + ("" if base.endswith("/") else "/") + name

    for name in tasks:
        task = get_task(name)
        todo = {}
        for split, rel in task.files.items():
            target = root / rel
            if target.exists() and not force:
                print(f"kept {target} (exists; --force replaces it)")
            else:
                todo[split] = target
        if not todo:
            continue
        if name in CS224N_TASKS:
            for target in todo.values():
                src = url(CS224N_URL, target.name)
                _write_atomic(target, _fetch(src), src)
        elif name == "mrpc":
            train_url = url(SENTEVAL_URL, "msr_paraphrase_train.txt")
            files = _mrpc_files(_fetch(train_url), _fetch(url(GLUE_URL, "mrpc_dev_ids.tsv")))
            for split, target in todo.items():
                _write_atomic(target, files[split], train_url)
        else:
            src = url(GLUE_URL, GLUE_ZIPS[name])
            try:
                with zipfile.ZipFile(io.BytesIO(_fetch(src))) as z:
                    members = set(z.namelist())
                    for split, target in todo.items():
                        member = task.files[split]
                        if member not in members:
                            raise DataError(f"{src}: the zip has no {member}")
                        _write_atomic(target, z.read(member), src)
            except zipfile.BadZipFile as e:
                raise DataError(f"{src}: not a valid zip file: {e}") from None


def check(data_dir: str | Path, tasks: Sequence[str] | None = None) -> dict[str, dict[str, int]]:
    """Validate every split of the given (or all present) tasks; return example counts."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"{root}: data directory does not exist")
    names = list(tasks) if tasks else find_layout(root)
    if not names:
        raise DataError(
            f"{root}: no complete task found (see the layouts in `python -m berter.data --help`)"
        )
    counts = {}
    for name in names:
        task = get_task(name)
        counts[name] = {split: len(read_task(task, root, split)) for split in task.files}
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m berter.data",
        description="\n\n".join(__doc__.split("\n\n")[1:4]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("download", help="fetch the CS224N and/or GLUE task files")
    p.add_argument("dir", nargs="?", default="data", help="target directory (default: data)")
    p.add_argument("--tasks", default=",".join(CS224N_TASKS), help=f"any of {','.join(TASKS)}")
    p.add_argument("--base-url", help="fetch every file from this mirror instead")
    p.add_argument("--force", action="store_true", help="replace existing files")
    p = sub.add_parser("check", help="validate a data directory and print counts")
    p.add_argument("dir")
    p.add_argument("--tasks", help="comma-separated (default: every task present)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    tasks = [t for t in args.tasks.split(",") if t] if args.tasks else None
    try:
        if args.command == "download":
            download(args.dir, tasks or CS224N_TASKS, args.base_url, args.force)
        else:
            for name, counts in check(args.dir, tasks).items():
                print(f"{name}: " + ", ".join(f"{s} {n}" for s, n in counts.items()))
    except BerterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())


