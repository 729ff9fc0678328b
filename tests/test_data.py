"""Tests of berter.data and berter.demo: readers, validation, tokenising, batching, download."""

from __future__ import annotations

import functools
import http.server
import io
import logging
import random
import threading
import zipfile
from collections import Counter
from pathlib import Path

import pytest
import torch

from berter.data import files as data
from berter.data.demo import SENTIMENT_WORDS, demo_examples
from berter.data.encode import EncodedSplit, encode, get_tokenizer, make_batches, multitask_schedule
from berter.data.files import find_layout, load_data, read_task
from berter.errors import ConfigError, DataError
from berter.tasks import TASKS, Batch, Example

REAL = Path(__file__).resolve().parents[2] / "shared/data/cs224n"
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"no real data at {REAL}")

SST_HEADER = ["id", "sentence", "sentiment"]
PAIR_HEADER = ["id", "sentence1", "sentence2"]


# ----------------------------------------------------------------------------- helpers
def write_tsv(path: Path, header: list[str], rows: list[list[str]], index: bool = True) -> Path:
    """A tab-separated file; index=True adds the CS224N unnamed leading index column."""
    lines = [([""] if index else []) + header]
    lines += [([str(i)] if index else []) + row for i, row in enumerate(rows)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(line) + "\n" for line in lines), encoding="utf-8")
    return path


def sst_rows(n: int = 10) -> list[list[str]]:
    return [
        [f"s{i}", f" sentence number {i} is {'good ' * (i % 4)}fine .", str(i % 5)]
        for i in range(n)
    ]


def write_cs224n(root: Path, n: int = 10) -> Path:
    """Small train and dev files for sst, para and sts."""
    for split in ("train", "dev"):
        write_tsv(root / f"ids-sst-{split}.csv", SST_HEADER, sst_rows(n))
        para = [
            [f"q{i}", f"how do i learn {i}?", f"what is the way to learn {i}?", f"{i % 2}.0"]
            for i in range(n)
        ]
        write_tsv(root / f"quora-{split}.csv", PAIR_HEADER + ["is_duplicate"], para)
        sts = [
            [f"t{i}", f"a man plays {i}", f"a man is playing {i}", f"{(i % 11) / 2}"]
            for i in range(n)
        ]
        write_tsv(root / f"sts-{split}.csv", PAIR_HEADER + ["similarity"], sts)
    return root


def data_error(fn, *parts: str) -> str:
    """Run fn, expect a one-line DataError containing every part."""
    with pytest.raises(DataError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg
    for part in parts:
        assert part in msg, msg
    return msg


def read_sst(path: Path) -> list[Example]:
    return read_task(TASKS["sst"], path.parent, "train")


@pytest.fixture(scope="module")
def tokenizer():
    return get_tokenizer("packaged")


def fake_split(lengths: list[int], num_labels: int = 5) -> EncodedSplit:
    """An encoded split with given sequence lengths, without a tokenizer."""
    task = TASKS["sst"] if num_labels == 5 else TASKS["para"]
    ids = [[101] + [7] * (n - 2) + [102] for n in lengths]
    labels = [float(i % 2) for i in range(len(lengths))]
    return EncodedSplit(task, "packed", ids, None, None, labels)


def padding(batches: list[Batch]) -> int:
    return sum(b.attention_mask.numel() - int(b.attention_mask.sum()) for b in batches)


# ----------------------------------------------------------------------------- readers
def test_reads_cs224n_files_with_index_column_quotes_and_float_labels(tmp_path):
    write_cs224n(tmp_path)
    sst = read_task(TASKS["sst"], tmp_path, "train")
    assert len(sst) == 10 and sst[0] == Example("s0", "sentence number 0 is fine .", None, 0.0)
    assert [e.label for e in sst[:6]] == [0, 1, 2, 3, 4, 0]
    para = read_task(TASKS["para"], tmp_path, "dev")
    assert {e.label for e in para} == {0.0, 1.0} and para[1].text_b == "what is the way to learn 1?"
    sts = read_task(TASKS["sts"], tmp_path, "train")
    assert sts[5].label == 2.5
    quoted = tmp_path / "q" / "ids-sst-train.csv"
    quoted.parent.mkdir()
    quoted.write_text('\tid\tsentence\tsentiment\n0\ta\t"""Quoted"" title , tab\tinside"\t4\n')
    assert read_sst(quoted)[0].text_a == '"Quoted" title , tab\tinside'


@needs_real
def test_reads_a_slice_of_each_real_cs224n_file(tmp_path):
    for task in ("sst", "para", "sts"):
        for name in TASKS[task].files.values():
            lines = (REAL / name).read_text(encoding="utf-8").splitlines(keepends=True)
            (tmp_path / name).write_text("".join(lines[:40]), encoding="utf-8")
        examples = read_task(TASKS[task], tmp_path, "train")
        assert len(examples) == 39 and all(e.text_a for e in examples)
    assert find_layout(tmp_path) == ["sst", "para", "sts"]


@needs_real
def test_all_real_cs224n_files_load_and_skip_only_two_unlabelled_quora_rows(caplog):
    with caplog.at_level(logging.WARNING, logger="berter.data"):
        d = load_data(REAL, ["sst", "para", "sts"], calib_fraction=0)
    sizes = {n: (len(s.train), len(s.dev)) for n, s in d.splits.items()}
    assert sizes == {"sst": (8544, 1101), "para": (16109, 4103), "sts": (6040, 863)}
    assert "skipped 2 row(s)" in caplog.text and "2033, 11316" in caplog.text
    assert {e.label for e in d.splits["para"].train} == {0.0, 1.0}
    assert d.source == str(REAL.resolve()) and not d.is_demo


def test_reads_glue_layout_with_literal_quotes_text_labels_and_bom(tmp_path):
    write_tsv(tmp_path / "SST-2/train.tsv", ["sentence", "label"],
              [['it \'s a " quoted mess ', "1"], ["dull and flat ", "0"]], index=False)  # fmt: skip
    write_tsv(tmp_path / "QQP/train.tsv", ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
              [["7", "1", "2", "why?", "how?", "0"], ["8", "3", "4", "who?", "whom?", "1"]], index=False)  # fmt: skip
    mrpc = (
        '\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t11\t12\tHe said "yes.\tHe agreed.\n'
    )
    (tmp_path / "MRPC").mkdir()
    (tmp_path / "MRPC/train.tsv").write_text(mrpc, encoding="utf-8")
    sts_header = ["index", "genre", "filename", "year", "old_index", "source1", "source2",
                  "sentence1", "sentence2", "score"]  # fmt: skip
    sts_row = [
        "0",
        "main-captions",
        "MSRvid",
        "2012test",
        "0001",
        "none",
        "none",
        "A plane.",
        "An air plane.",
    ]
    write_tsv(tmp_path / "STS-B/train.tsv", sts_header,
              [sts_row + ["5.000"], ["1", *sts_row[1:8], "Two planes.", "stray", "3.200"]], index=False)  # fmt: skip
    write_tsv(tmp_path / "RTE/train.tsv", ["index", "sentence1", "sentence2", "label"],
              [["0", "A cat sat.", "A cat exists.", "entailment"],
               ["1", "A cat sat.", "A dog ran.", "not_entailment"]], index=False)  # fmt: skip

    sst2 = read_task(TASKS["sst2"], tmp_path, "train")
    assert sst2[0] == Example("1", "it 's a \" quoted mess", None, 1.0)
    qqp = read_task(TASKS["qqp"], tmp_path, "train")
    assert [(e.id, e.text_b, e.label) for e in qqp] == [("7", "how?", 0.0), ("8", "whom?", 1.0)]
    assert read_task(TASKS["mrpc"], tmp_path, "train")[0].text_a == 'He said "yes.'
    stsb = read_task(TASKS["stsb"], tmp_path, "train")
    assert [(e.text_b, e.label) for e in stsb] == [("An air plane.", 5.0), ("Two planes.", 3.2)]
    assert [e.label for e in read_task(TASKS["rte"], tmp_path, "train")] == [1.0, 0.0]


def test_find_layout_lists_only_tasks_with_train_and_dev(tmp_path):
    write_cs224n(tmp_path)
    (tmp_path / "sts-dev.csv").unlink()
    write_tsv(tmp_path / "RTE/train.tsv", ["index"], [], index=False)
    write_tsv(tmp_path / "RTE/dev.tsv", ["index"], [], index=False)
    assert find_layout(tmp_path) == ["sst", "para", "rte"]


# ----------------------------------------------------------------------------- bad input
def test_missing_data_dir_is_an_error_naming_it(tmp_path):
    data_error(lambda: load_data(tmp_path / "nope", ["sst"]), "nope", "does not exist", "download")


def test_missing_file_error_suggests_the_download_command(tmp_path):
    write_cs224n(tmp_path)
    (tmp_path / "quora-dev.csv").unlink()
    data_error(lambda: load_data(tmp_path, ["sst", "para"]), "quora-dev.csv", "missing file",
               "python -m berter.data download")  # fmt: skip


def test_comma_separated_file_is_reported_as_wrong_delimiter(tmp_path):
    path = tmp_path / "ids-sst-train.csv"
    path.write_text(",id,sentence,sentiment\n0,a,hello,3\n")
    data_error(lambda: read_sst(path), str(path), "line 1", "expected tab-separated", "comma")


def test_missing_column_is_named(tmp_path):
    path = write_tsv(tmp_path / "ids-sst-train.csv", ["id", "text", "sentiment"], [["a", "x", "1"]])
    data_error(lambda: read_sst(path), str(path), "missing column(s) sentence", "found:")


def test_zero_byte_file_is_empty(tmp_path):
    path = tmp_path / "ids-sst-train.csv"
    path.write_bytes(b"")
    data_error(lambda: read_sst(path), str(path), "empty file")


def test_header_only_file_has_no_data_rows(tmp_path):
    path = write_tsv(tmp_path / "ids-sst-train.csv", SST_HEADER, [])
    data_error(lambda: read_sst(path), str(path), "no data rows")


def test_non_numeric_label_names_row_and_value(tmp_path):
    path = write_tsv(
        tmp_path / "ids-sst-train.csv", SST_HEADER, sst_rows(3) + [["z", "ok", "great"]]
    )
    data_error(lambda: read_sst(path), str(path), "row 4", "'great'", "not a number")


@pytest.mark.parametrize(
    ("task", "label", "expected"),
    [("sst", "5", "integer 0 to 4"), ("sst", "2.5", "integer 0 to 4"), ("sst", "-1", "integer 0 to 4"),
     ("para", "2.0", "integer 0 to 1"), ("sts", "5.5", "0 to 5")],
)  # fmt: skip
def test_label_out_of_range_names_row_and_range(tmp_path, task, label, expected):
    write_cs224n(tmp_path, n=3)
    name = TASKS[task].files["train"]
    path = tmp_path / name
    lines = path.read_text().splitlines()
    lines[2] = "\t".join(lines[2].split("\t")[:-1] + [label])
    path.write_text("\n".join(lines) + "\n")
    data_error(
        lambda: read_task(TASKS[task], tmp_path, "train"), name, "row 2", "out of range", expected
    )


def test_repeated_header_row_is_an_error(tmp_path):
    path = write_tsv(tmp_path / "ids-sst-train.csv", SST_HEADER, sst_rows(2) + [SST_HEADER])
    data_error(lambda: read_sst(path), str(path), "row 3", "repeats the header")


def test_duplicate_ids_name_both_rows(tmp_path):
    rows = sst_rows(4)
    rows[3][0] = rows[1][0]
    path = write_tsv(tmp_path / "ids-sst-train.csv", SST_HEADER, rows)
    data_error(lambda: read_sst(path), str(path), "row 4", "duplicate id 's1'", "first at row 2")


def test_empty_sentence_is_an_error(tmp_path):
    rows = sst_rows(3)
    rows[2][1] = "   "
    path = write_tsv(tmp_path / "ids-sst-train.csv", SST_HEADER, rows)
    data_error(lambda: read_sst(path), str(path), "row 3", "empty text in column 'sentence'")


def test_row_with_extra_fields_names_the_file_line(tmp_path):
    path = write_tsv(
        tmp_path / "ids-sst-train.csv", SST_HEADER, sst_rows(3) + [["x", "a", "1", "junk"]]
    )
    data_error(
        lambda: read_sst(path), str(path), "line 5", "expected 4 tab-separated fields, saw 5"
    )


def test_unknown_text_label_is_an_error(tmp_path):
    write_tsv(tmp_path / "RTE/train.tsv", ["index", "sentence1", "sentence2", "label"],
              [["0", "a", "b", "contradiction"]], index=False)  # fmt: skip
    data_error(lambda: read_task(TASKS["rte"], tmp_path, "train"), "RTE/train.tsv", "row 1",
               "'contradiction' is not one of not_entailment, entailment")  # fmt: skip


def test_empty_label_is_skipped_in_quora_but_an_error_elsewhere(tmp_path):
    write_cs224n(tmp_path, n=4)
    for name in ("quora-train.csv", "sts-train.csv"):
        path = tmp_path / name
        lines = path.read_text().splitlines()
        lines[2] = "\t".join(lines[2].split("\t")[:-1] + [""])
        path.write_text("\n".join(lines) + "\n")
    assert [e.id for e in read_task(TASKS["para"], tmp_path, "train")] == ["q0", "q2", "q3"]
    data_error(lambda: read_task(TASKS["sts"], tmp_path, "train"), "sts-train.csv", "row 2", "''")


def test_unknown_task_and_bad_calib_fraction_are_config_errors():
    with pytest.raises(ConfigError, match="unknown task 'nli'"):
        load_data(None, ["sst", "nli"])
    with pytest.raises(ConfigError, match="calib_fraction"):
        load_data(None, ["sst"], calib_fraction=1.0)


# ----------------------------------------------------------------------------- splits
def test_caps_take_a_seeded_random_subset_not_the_head():
    d = load_data(None, ["sst"], max_train=50, max_dev=20, calib_fraction=0, seed=1)
    s = d.splits["sst"]
    assert (len(s.train), len(s.dev)) == (50, 20)
    full = demo_examples("sst", "train")
    assert [e.id for e in s.train] != [e.id for e in full[:50]]
    assert [e.id for e in s.train] == [e.id for e in full if e in s.train]  # file order kept
    again = load_data(None, ["sst"], max_train=50, max_dev=20, calib_fraction=0, seed=1)
    other = load_data(None, ["sst"], max_train=50, max_dev=20, calib_fraction=0, seed=2)
    assert again.splits["sst"].train == s.train and other.splits["sst"].train != s.train


def test_calib_slice_is_carved_from_the_capped_train_set_and_disjoint():
    capped = load_data(None, ["para", "sts"], max_train=200, calib_fraction=0).splits
    d = load_data(None, ["para", "sts"], max_train=200, calib_fraction=0.1, calib_max=15)
    assert list(d.splits) == ["para", "sts"] and d.source == "demo" and d.is_demo
    for name, s in d.splits.items():
        assert len(s.calib) == 15 and len(s.train) == 185
        train_ids, calib_ids = {e.id for e in s.train}, {e.id for e in s.calib}
        assert not train_ids & calib_ids
        assert train_ids | calib_ids == {e.id for e in capped[name].train}
    assert (
        len(load_data(None, ["sst"], calib_fraction=0.05).splits["sst"].calib) == 20
    )  # round(0.05*400)


def test_demo_data_is_deterministic_balanced_and_disjoint_between_splits():
    for task in ("sst", "sst2", "para", "sts"):
        train, dev = demo_examples(task, "train"), demo_examples(task, "dev")
        assert train == demo_examples(task, "train") and (len(train), len(dev)) == (400, 120)
        assert not {(e.text_a, e.text_b) for e in train} & {(e.text_a, e.text_b) for e in dev}
        counts = Counter(e.label for e in train)
        assert max(counts.values()) - min(counts.values()) <= 1, counts
        assert len({e.id for e in train + dev}) == 520
    assert demo_examples("qqp", "dev") == demo_examples("para", "dev")


def test_demo_sentiment_words_determine_the_label():
    for ex in demo_examples("sst", "train") + demo_examples("sst", "dev"):
        words = set(ex.text_a.split())
        hits = [c for c, group in enumerate(SENTIMENT_WORDS) if words & set(group)]
        assert hits == [int(ex.label)], ex


def test_demo_similarity_score_follows_word_overlap():
    examples = demo_examples("sts", "train")
    overlap = [len(set(e.text_a.split()) & set(e.text_b.split())) for e in examples]
    by_score = {
        s: [o for o, e in zip(overlap, examples, strict=True) if e.label == s] for s in range(6)
    }
    means = [sum(v) / len(v) for v in by_score.values()]
    assert means == sorted(means), means


# ----------------------------------------------------------------------------- tokenising
def test_packed_layout_is_cls_a_sep_b_sep_with_type_ids(tokenizer):
    ex = [Example("1", "hello world", "good night", 1.0)]
    enc = encode(ex, TASKS["para"], tokenizer, 32, "packed")
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    a = tokenizer("hello world", add_special_tokens=False)["input_ids"]
    b = tokenizer("good night", add_special_tokens=False)["input_ids"]
    assert enc.ids_a[0] == [cls, *a, sep, *b, sep] and enc.ids_b is None
    assert enc.type_ids[0] == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    batch = make_batches(enc, 4, shuffle=False, seed=0)[0]
    assert batch.token_type_ids.tolist() == [enc.type_ids[0]] and batch.input_ids_b is None
    assert batch.labels.dtype == torch.float32


def test_separate_layout_tokenises_each_sentence_alone(tokenizer):
    ex = [Example("1", "hello world", "good night to you", 0.0), Example("2", "a", "b", 1.0)]
    enc = encode(ex, TASKS["sts"], tokenizer, 32, "separate")
    assert enc.type_ids is None and len(enc.ids_b) == 2
    assert enc.ids_a[0] == tokenizer("hello world")["input_ids"]
    assert enc.ids_b[0] == tokenizer("good night to you")["input_ids"]
    batch = make_batches(enc, 2, shuffle=False, seed=0)[0]
    assert batch.input_ids_b.shape == (2, len(enc.ids_b[0])) and batch.token_type_ids is None
    assert batch.num_tokens == sum(enc.lengths())


def test_single_sentence_tasks_ignore_layout_and_truncate_to_max_len(tokenizer):
    ex = [Example("1", "word " * 100, None, 3.0)]
    enc = encode(ex, TASKS["sst"], tokenizer, 16, "separate")
    assert enc.layout == "packed" and enc.ids_b is None and enc.type_ids is None
    assert len(enc.ids_a[0]) == 16 and enc.ids_a[0][-1] == tokenizer.sep_token_id
    assert make_batches(enc, 1, False, 0)[0].labels.dtype == torch.int64
    packed = encode(
        [Example("1", "x " * 50, "y " * 50, 1.0)], TASKS["para"], tokenizer, 24, "packed"
    )
    assert len(packed.ids_a[0]) == 24


# ----------------------------------------------------------------------------- batching
def test_batches_are_padded_to_their_own_longest_sequence():
    lengths = [5, 9, 3, 30, 7, 4, 12, 6]
    enc = fake_split(lengths)
    for b in make_batches(enc, 3, shuffle=True, seed=0, bucket=False):
        own = [lengths[i] for i in b.index.tolist()]
        assert b.input_ids.shape[1] == max(own)
        assert b.attention_mask.sum(1).tolist() == own and b.num_tokens == sum(own)
        assert (b.input_ids[b.attention_mask == 0] == 0).all()


def test_bucketing_cuts_padding_versus_random_batches():
    rng = random.Random(0)
    enc = fake_split([rng.randint(4, 120) for _ in range(2000)])
    bucketed = make_batches(enc, 16, shuffle=True, seed=0, bucket=True)
    plain = make_batches(enc, 16, shuffle=True, seed=0, bucket=False)
    assert padding(bucketed) < padding(plain) / 5
    assert sorted(i for b in bucketed for i in b.index.tolist()) == list(range(2000))


def test_batches_are_deterministic_under_seed_and_differ_across_seeds():
    rng = random.Random(1)
    enc = fake_split([rng.randint(4, 60) for _ in range(500)])

    def order(seed):
        return [b.index.tolist() for b in make_batches(enc, 8, shuffle=True, seed=seed)]

    assert order(3) == order(3) and order(3) != order(4)


def test_eval_batches_are_sorted_longest_first_and_keep_indices():
    lengths = [5, 9, 3, 30, 7, 4, 12, 6, 8]
    batches = make_batches(fake_split(lengths), 4, shuffle=False, seed=0)
    flat = [i for b in batches for i in b.index.tolist()]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
    assert [len(b) for b in batches] == [4, 4, 1]


def test_batch_to_moves_every_tensor_and_keeps_token_count():
    b = make_batches(fake_split([5, 8], num_labels=2), 2, False, 0)[0]
    moved = b.to("cpu", non_blocking=True)
    assert moved.num_tokens == 13 and len(moved) == 2 and moved.labels.dtype == torch.float32
    assert b.pin_memory().input_ids.tolist() == b.input_ids.tolist()


# ----------------------------------------------------------------------------- schedule
def task_batches() -> dict[str, list[Batch]]:
    enc = {"sst": fake_split([5] * 40), "para": fake_split([6] * 16, num_labels=2)}
    enc["sts"] = EncodedSplit(TASKS["sts"], "packed", [[101, 102]] * 8, None, None, [1.0] * 8)
    return {name: make_batches(e, 4, True, 0) for name, e in enc.items()}


@pytest.mark.parametrize("mode", ["round_robin", "proportional"])
def test_schedule_visits_each_batch_once_and_interleaves_tasks(mode):
    batches = task_batches()
    schedule = multitask_schedule(batches, mode, seed=0)
    assert sorted(map(id, schedule)) == sorted(id(b) for bs in batches.values() for b in bs)
    first = [b.task for b in schedule[:6]]
    assert len(set(first)) >= 2, first  # never all of one task first
    assert multitask_schedule(batches, mode, seed=0) == schedule


def test_round_robin_cycles_tasks_in_order_skipping_exhausted_ones():
    names = [b.task for b in multitask_schedule(task_batches(), "round_robin", seed=0)]
    assert names[:6] == ["sst", "para", "sts", "sst", "para", "sts"]
    assert names[6:] == ["sst", "para", "sst", "para"] + ["sst"] * 6  # 10, 4 and 2 batches


def test_proportional_spreads_a_small_task_over_the_whole_epoch():
    """Round robin ends an epoch on the largest task alone; proportional keeps every task
    coming until the end (what the model last saw before an evaluation)."""
    big = fake_split([5] * 240)
    small = EncodedSplit(TASKS["sts"], "packed", [[101, 102]] * 48, None, None, [1.0] * 48)
    batches = {"sst": make_batches(big, 4, True, 0), "sts": make_batches(small, 4, True, 0)}
    tail = lambda order: [b.task for b in order[-20:]]  # noqa: E731  the last third
    assert set(tail(multitask_schedule(batches, "round_robin", 0))) == {"sst"}
    for seed in range(10):
        assert "sts" in tail(multitask_schedule(batches, "proportional", seed))


def test_proportional_schedule_depends_on_seed_and_rejects_unknown_modes():
    batches = task_batches()
    orders = {
        tuple(b.task for b in multitask_schedule(batches, "proportional", s)) for s in range(5)
    }
    assert len(orders) > 1
    with pytest.raises(ConfigError):
        multitask_schedule(batches, "random", 0)


# ----------------------------------------------------------------------------- download CLI
class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A local HTTP mirror of small CS224N files, SST-2.zip and the MRPC source files."""
    root = write_cs224n(tmp_path / "mirror", n=6)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("SST-2/train.tsv", "sentence\tlabel\ngreat fun \t1\nawful \t0\n")
        z.writestr("SST-2/dev.tsv", "sentence\tlabel\nfine \t1\n")
        z.writestr("SST-2/test.tsv", "index\tsentence\n0\tx\n")
    (root / "SST-2.zip").write_bytes(buf.getvalue())
    header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    rows = "".join(f"{i % 2}\t{i}\t{i + 100}\tA {i}.\tB {i}.\n" for i in range(5))
    (root / "msr_paraphrase_train.txt").write_text(header + rows, encoding="utf-8")
    (root / "mrpc_dev_ids.tsv").write_text("1\t101\n3\t103\n")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "*")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_fetches_cs224n_and_glue_files_then_check_counts_them(mirror, tmp_path, capsys):
    out = tmp_path / "data"
    argv = ["download", str(out), "--tasks", "sst,para,sts,sst2,mrpc", "--base-url", mirror]
    assert data.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 10 and all(line.startswith("wrote ") for line in lines)
    assert (out / "quora-train.csv").read_bytes() == (
        tmp_path / "mirror/quora-train.csv"
    ).read_bytes()
    assert not list(out.rglob(".*.tmp"))
    assert [e.label for e in read_task(TASKS["sst2"], out, "train")] == [1.0, 0.0]
    mrpc_dev = read_task(TASKS["mrpc"], out, "dev")
    assert [e.text_a for e in mrpc_dev] == ["A 1.", "A 3."]
    assert len(read_task(TASKS["mrpc"], out, "train")) == 3

    assert data.main(["check", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "sst: train 6, dev 6", "para: train 6, dev 6", "sts: train 6, dev 6",
        "sst2: train 2, dev 1", "mrpc: train 3, dev 2",
    ]  # fmt: skip


def test_download_keeps_existing_files_unless_forced(mirror, tmp_path, capsys):
    out = tmp_path / "data"
    out.mkdir()
    (out / "sts-train.csv").write_text("mine")
    assert data.main(["download", str(out), "--tasks", "sts", "--base-url", mirror]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("kept ") and lines[1].startswith("wrote ") and len(lines) == 2
    assert (out / "sts-train.csv").read_text() == "mine"
    assert data.main(["download", str(out), "--tasks", "sts", "--base-url", mirror, "--force"]) == 0
    assert (out / "sts-train.csv").read_text() != "mine"


def test_download_failure_is_one_line_on_stderr_with_exit_code_2(mirror, tmp_path, capsys):
    out = tmp_path / "data"
    assert data.main(["download", str(out), "--tasks", "rte", "--base-url", mirror]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RTE.zip" in err and "404" in err
    assert not (out / "RTE").exists()
    assert data.main(["check", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
