"""Tests of adafilter_lib.data: split sizes and determinism, transforms, folder and archive loaders,
and the download boundary of the torchvision-backed sets (nothing here touches the network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from adafilter_lib.core.config import DataConfig
from adafilter_lib.core.errors import KitError
from adafilter_lib.data import DATASETS, build_datasets, dataset_names, offline, uc_merced
from adafilter_lib.data.folder import FileImages
from adafilter_lib.data.splits import TEST_SEED, carve_train_val, stratified_holdout
from adafilter_lib.data.transforms import PRESETS, eval_transform, train_transform

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def build(dataset: str, **kwargs):
    kwargs.setdefault("resolution", 32)
    return build_datasets(DataConfig(dataset=dataset, **kwargs), MEAN, STD)


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def write_image(path: Path, size=(12, 10), mode="RGB", fmt=None, seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path, format=fmt)
    return path


def class_tree(root: Path, counts: dict[str, int], ext=".png") -> None:
    for c, n in counts.items():
        for i in range(n):
            write_image(root / c / f"img{i:03d}{ext}", seed=i, mode="L" if i == 0 else "RGB")


# ---------------------------------------------------------------- splits (pure functions)


def test_carve_train_val_sizes_stratified_and_deterministic():
    labels = np.repeat(np.arange(5), 30)[np.random.default_rng(1).permutation(150)]
    train, val = carve_train_val(labels, 20, 0.2, split_seed=3)
    assert np.bincount(labels[train]).tolist() == [16] * 5
    assert np.bincount(labels[val]).tolist() == [4] * 5
    assert not set(train) & set(val)
    again = carve_train_val(labels, 20, 0.2, split_seed=3)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    other = carve_train_val(labels, 20, 0.2, split_seed=4)
    assert not np.array_equal(train, other[0])


def test_carve_all_images_keeps_one_val_per_class_and_names_short_class():
    labels = np.array([0] * 3 + [1] * 10)
    train, val = carve_train_val(labels, None, 0.01, split_seed=0)
    assert np.bincount(labels[val]).tolist() == [1, 1] and len(train) == 11
    with pytest.raises(KitError) as excinfo:
        carve_train_val(labels, 5, 0.2, split_seed=0, class_names=["cat", "dog"])
    message = one_line_error(excinfo)
    assert "'cat'" in message and "only 3" in message and "n_per_class=5" in message


def test_offline_splits_disjoint_from_fixed_test():
    digits = DATASETS["digits"].load(None)
    labels = np.concatenate([digits.train.labels, digits.test.labels])
    rest, test = stratified_holdout(labels, 0.3, TEST_SEED)
    train, val = carve_train_val(labels[rest], 20, 0.2, split_seed=7)
    train, val = rest[train], rest[val]
    assert not (set(train) & set(val)) and not (set(train) | set(val)) & set(test)


# ---------------------------------------------------------------- offline datasets


@pytest.mark.parametrize("name,test_size", [("digits", None), ("mnist5k", 1500)])
def test_offline_split_sizes_and_fixed_test(name, test_size):
    a = build(name, n_per_class=20, val_fraction=0.2, split_seed=0)
    torch.manual_seed(123)  # a different run seed must not matter
    np.random.seed(123)
    b = build(name, n_per_class=20, val_fraction=0.2, split_seed=1)
    c = build(name, n_per_class=20, val_fraction=0.2, split_seed=0)
    for splits in (a, b):
        assert splits.classes == [str(d) for d in range(10)]
        assert np.bincount(splits.train.labels).tolist() == [16] * 10
        assert np.bincount(splits.val.labels).tolist() == [4] * 10
        assert np.array_equal(splits.train_eval.images, splits.train.images)
    if test_size is not None:
        assert len(a.test) == test_size
    assert np.array_equal(a.test.images, b.test.images) and np.array_equal(a.test.labels, b.test.labels)
    assert np.array_equal(a.train.images, c.train.images) and np.array_equal(a.val.images, c.val.images)
    assert not np.array_equal(a.train.images, b.train.images)


def test_offline_items_are_normalized_rgb():
    splits = build("mnist5k", n_per_class=4, resolution=28)
    assert splits.num_classes == 10 and len(splits.train) == 30
    for dataset in (splits.train, splits.val, splits.test, splits.train_eval):
        image, label = dataset[0]
        assert image.shape == (3, 28, 28) and image.dtype == torch.float32 and isinstance(label, int)
    image, _ = splits.train_eval[5]
    raw = torch.from_numpy(splits.train_eval.images[5]).float() / 255  # resize 28 -> 28 is the identity
    restored = image * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]
    assert torch.allclose(restored, raw.expand(3, -1, -1), atol=1e-5)


def test_in_memory_eval_splits_are_transformed_once_and_bit_identical():
    first = build("digits", n_per_class=6, resolution=40)
    pool = offline.load_digits_pool()
    plain = eval_transform(40, MEAN, STD, natural=False)
    reference = pool.test.subset(np.arange(len(pool.test.labels)), plain)
    assert len(first.test) == len(reference) and np.array_equal(first.test.labels, reference.labels)
    assert all(torch.equal(first.test[i][0], reference[i][0]) for i in range(0, len(reference), 37))
    again = build("digits", n_per_class=6, resolution=40)
    assert again.test.images is first.test.images and again.val.images is first.val.images  # no second transform
    other_val = build("digits", n_per_class=6, resolution=40, split_seed=1)
    assert other_val.test.images is first.test.images and not torch.equal(other_val.val.images, first.val.images)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("natural", [True, False])
def test_presets_give_square_rgb(preset, natural):
    gray = torch.randint(0, 256, (1, 8, 9), dtype=torch.uint8)
    rgba = Image.new("RGBA", (40, 30), (10, 20, 30, 255))
    for transform in (train_transform(preset, 24, MEAN, STD, natural), eval_transform(24, MEAN, STD, natural)):
        for image in (gray, rgba.convert("RGB")):
            out = transform(image)
            assert out.shape == (3, 24, 24) and out.dtype == torch.float32


def test_unknown_preset_and_dataset_list_valid_names():
    with pytest.raises(KitError) as excinfo:
        build("digits", augment="heavy")
    assert all(p in one_line_error(excinfo) for p in PRESETS)
    with pytest.raises(KitError) as excinfo:
        build("mnist")
    message = one_line_error(excinfo)
    assert "mnist5k" in message and "folder:PATH" in message and "uc_merced" in message
    assert dataset_names() == sorted(DATASETS)


# ---------------------------------------------------------------- folder:PATH


def test_folder_carves_fixed_test_and_val(tmp_path):
    class_tree(tmp_path / "pets", {"cat": 10, "dog": 6})
    splits = build(f"folder:{tmp_path / 'pets'}", split_seed=0)
    assert splits.classes == ["cat", "dog"]
    assert np.bincount(splits.test.labels).tolist() == [2, 1]  # 20% per class, at least 1
    assert np.bincount(splits.val.labels).tolist() == [2, 1]
    assert len(splits.train) == 16 - 3 - 3
    other = build(f"folder:{tmp_path / 'pets'}", split_seed=5)
    assert other.test.paths == splits.test.paths
    assert not set(splits.train.paths) & set(splits.val.paths) | set(splits.test.paths) & set(splits.train.paths)
    image, label = splits.train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32


def test_folder_with_train_and_test_layout(tmp_path):
    class_tree(tmp_path / "train", {"a": 5, "b": 5})
    class_tree(tmp_path / "test", {"a": 2, "b": 3}, ext=".jpg")
    splits = build(f"folder:{tmp_path}", val_fraction=0.2)
    assert len(splits.test) == 5 and all(p.endswith(".jpg") for p in splits.test.paths)
    assert len(splits.train) == 8 and len(splits.val) == 2
    assert splits.test[4][0].shape == (3, 32, 32)


def test_folder_errors_are_one_line(tmp_path):
    with pytest.raises(KitError) as excinfo:
        build(f"folder:{tmp_path / 'nope'}")
    assert "does not exist" in one_line_error(excinfo)
    with pytest.raises(KitError) as excinfo:
        build(f"folder:{tmp_path}")
    assert "no class subfolders" in one_line_error(excinfo)
    class_tree(tmp_path / "set", {"a": 4})
    (tmp_path / "set" / "empty_class").mkdir()
    with pytest.raises(KitError) as excinfo:
        build(f"folder:{tmp_path / 'set'}")
    assert "empty_class" in one_line_error(excinfo)


def test_a_folder_with_one_class_is_refused(tmp_path):
    class_tree(tmp_path / "one", {"cat": 10})
    with pytest.raises(KitError) as excinfo:
        build(f"folder:{tmp_path / 'one'}")
    assert "has 1 class (cat)" in one_line_error(excinfo) and "at least 2" in one_line_error(excinfo)


def test_folder_corrupt_image_named_at_build_and_at_load(tmp_path):
    class_tree(tmp_path, {"a": 4, "b": 4})
    bad = tmp_path / "b" / "broken.png"
    bad.write_bytes(b"this is not a png at all")
    with pytest.raises(KitError) as excinfo:
        build(f"folder:{tmp_path}")
    message = one_line_error(excinfo)
    assert str(bad) in message and "remove or replace" in message
    with pytest.raises(KitError) as excinfo:
        FileImages([bad], [0])[0]
    assert str(bad) in one_line_error(excinfo)


# ---------------------------------------------------------------- archive-backed paper sets


def test_mit_indoor67_fake_archive(tmp_path):
    base = tmp_path / "mit_indoor67"
    class_tree(base / "Images", {"bar": 5, "kitchen": 5}, ext=".jpg")
    (base / "TrainImages.txt").write_text("".join(f"{c}/img{i:03d}.jpg\n" for c in ("bar", "kitchen") for i in range(4)))
    (base / "TestImages.txt").write_text("bar/img004.jpg\nkitchen/img004.jpg\n")
    splits = build("mit_indoor67", root=str(tmp_path), val_fraction=0.25)
    assert splits.classes == ["bar", "kitchen"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 2, 2)
    assert splits.test[1][1] == 1 and splits.test[1][0].shape == (3, 32, 32)
    (base / "TestImages.txt").write_text("bar/missing.jpg\n")
    with pytest.raises(KitError) as excinfo:
        build("mit_indoor67", root=str(tmp_path))
    assert "bar/missing.jpg" in one_line_error(excinfo)
    with pytest.raises(KitError) as excinfo:
        build("mit_indoor67", root=str(tmp_path / "elsewhere"))
    assert str(tmp_path / "elsewhere" / "mit_indoor67") in one_line_error(excinfo)


def test_stanford_dogs_mat_lists(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    base = tmp_path / "stanford_dogs"
    folders = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel"]
    class_tree(base / "Images", {f: 4 for f in folders}, ext=".jpg")

    def cells(names):
        out = np.empty((len(names), 1), dtype=object)
        for i, name in enumerate(names):
            out[i, 0] = np.array([name])
        return out

    scipy_io.savemat(base / "train_list.mat", {"file_list": cells([f"{f}/img{i:03d}.jpg" for f in folders for i in range(3)])})
    scipy_io.savemat(base / "test_list.mat", {"file_list": cells([f"{f}/img003.jpg" for f in folders])})
    splits = build("stanford_dogs", root=str(tmp_path))
    assert splits.classes == ["Chihuahua", "Japanese_spaniel"]
    assert len(splits.train) + len(splits.val) == 6 and len(splits.test) == 2


SHARED_UC_MERCED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "uc_merced"


def test_uc_merced_split_is_fixed_balanced_and_keeps_the_duplicate_pair_together():
    split = uc_merced.read_split()
    stems = sorted(split)
    classes = sorted({c for c, _ in split.values()})
    labels = np.array([classes.index(split[s][0]) for s in stems])
    test = {s for s in stems if split[s][1] == "test"}
    assert len(stems) == 2100 and len(classes) == 21 and len(test) == 420
    assert np.bincount(labels[[split[s][1] == "test" for s in stems]]).tolist() == [20] * 21
    assert split["airplane01"][1] == split["airplane02"][1]
    # The written file is what the carving function gives: the same test files every time.
    assert uc_merced.carve_test_split(stems, labels, classes) == test


@pytest.mark.parametrize("n", range(4, 16))
def test_carve_test_split_never_separates_the_duplicate_pair(n):
    stems = [f"airplane{i:02d}" for i in range(n)] + [f"beach{i:02d}" for i in range(n)]
    labels = np.array([0] * n + [1] * n)
    test = uc_merced.carve_test_split(stems, labels, ["airplane", "beach"])
    _, plain = stratified_holdout(labels, 0.2, TEST_SEED)
    assert ("airplane01" in test) == ("airplane02" in test)
    assert len(test) == len(plain) and sum(s.startswith("beach") for s in test) == sum(labels[plain] == 1)


def test_carve_test_split_swaps_when_the_seeded_carving_separates_the_pair():
    separated = []
    for n in range(4, 40):
        stems = [f"airplane{i:02d}" for i in range(n)]
        _, held = stratified_holdout(np.zeros(n, dtype=int), 0.2, TEST_SEED)
        if ("airplane01" in {stems[i] for i in held}) != ("airplane02" in {stems[i] for i in held}):
            separated.append(n)
            test = uc_merced.carve_test_split(stems, np.zeros(n, dtype=int), ["airplane"])
            assert ("airplane01" in test) == ("airplane02" in test) and len(test) == len(held)
    assert separated  # the swap path is exercised, not only the lucky case


def test_uc_merced_bundled_copy_loads_offline_with_the_fixed_split():
    splits = build("uc_merced", n_per_class=20, resolution=48)
    assert len(splits.classes) == 21 and splits.classes[0] == "agricultural"
    assert len(splits.train) == 21 * 16 and len(splits.val) == 21 * 4 and len(splits.test) == 420
    assert np.bincount(splits.test.labels).tolist() == [20] * 21
    image, _ = splits.test[0]
    assert image.shape == (3, 48, 48) and image.dtype == torch.float32


def _release_tree(root: Path, classes: dict[str, int], ext: str = ".tif") -> None:
    for cls, n in classes.items():
        for i in range(n):
            write_image(root / cls / f"{cls}{i:02d}{ext}", size=(20, 19), seed=i)


def test_uc_merced_full_zip_layout_uses_the_bundled_split(tmp_path):
    _release_tree(tmp_path / "UCMerced_LandUse" / "Images", {"beach": 100, "forest": 100})
    splits = build("uc_merced_full", root=str(tmp_path))
    split = uc_merced.read_split()
    assert splits.classes == ["beach", "forest"]
    expected = sorted(s for s, (c, part) in split.items() if part == "test" and c in ("beach", "forest"))
    assert sorted(Path(p).stem for p in splits.test.paths) == expected


def test_uc_merced_full_refuses_stray_files_and_missing_release(tmp_path):
    _release_tree(tmp_path / "uc_merced", {"beach": 3})
    write_image(tmp_path / "uc_merced" / "beach" / "holiday.jpg")
    with pytest.raises(KitError, match="not an image of the UC Merced release"):
        build("uc_merced_full", root=str(tmp_path))
    with pytest.raises(KitError) as excinfo:
        build("uc_merced_full", root=str(tmp_path / "nothing"))
    assert "uc_merced_full" in one_line_error(excinfo) and "prepare" in one_line_error(excinfo)


@pytest.mark.skipif(
    not SHARED_UC_MERCED.is_dir(),
    reason="the full-resolution UC Merced release (../shared/data/uc_merced) "
    "is only on the project's CI and development machines",
)
def test_uc_merced_full_reads_the_real_release():
    splits = build("uc_merced_full", root=str(SHARED_UC_MERCED.parent), resolution=32)
    compact = build("uc_merced", resolution=32)
    assert splits.classes == compact.classes
    assert len(splits.train) + len(splits.val) == 1680 and len(splits.test) == 420
    assert np.array_equal(splits.test.labels, compact.test.labels)
    with Image.open(splits.test.paths[0]) as image:
        assert min(image.size) >= 242  # full resolution, not the compact copy
    assert splits.test[0][0].shape == (3, 32, 32)


# ---------------------------------------------------------------- torchvision-backed paper sets


def test_download_failure_says_where_to_put_data(tmp_path, monkeypatch):
    calls = []

    class Offline:
        def __init__(self, root, **kwargs):
            calls.append(kwargs)
            if kwargs.get("download"):
                raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")
            raise RuntimeError("Dataset not found. You can use download=True to download it")

    monkeypatch.setattr(torchvision.datasets, "FGVCAircraft", Offline)
    with pytest.raises(KitError) as excinfo:
        build("fgvc_aircraft", root=str(tmp_path / "store"))
    message = one_line_error(excinfo)
    assert str(tmp_path / "store" / "fgvc-aircraft-2013b") in message and "robots.ox.ac.uk" in message
    assert "download" not in calls[0] and calls[1]["download"] is True
    assert calls[0]["annotation_level"] == "variant" and calls[0]["split"] == "trainval"


def test_dtd_present_locally_never_downloads(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torchvision.datasets.dtd, "download_and_extract_archive", no_network)
    data = tmp_path / "dtd" / "dtd"
    class_tree(data / "images", {"banded": 4, "woven": 4}, ext=".jpg")
    parts = {"train": range(0, 2), "val": range(2, 3), "test": range(3, 4)}
    for split, ids in parts.items():
        (data / "labels").mkdir(exist_ok=True)
        (data / "labels" / f"{split}1.txt").write_text("".join(f"{c}/img{i:03d}.jpg\n" for c in ("banded", "woven") for i in ids))
    splits = build("dtd", root=str(tmp_path), val_fraction=0.3)
    assert splits.classes == ["banded", "woven"]
    assert len(splits.train) + len(splits.val) == 6 and len(splits.test) == 2
    assert splits.val[0][0].shape == (3, 32, 32)


def test_caltech256_protocol_drops_clutter(tmp_path):
    base = tmp_path / "caltech256" / "256_ObjectCategories"
    for folder, n in (("001.ak47", 33), ("002.bat", 31), ("257.clutter", 3)):
        for i in range(n):
            write_image(base / folder / f"{folder[:3]}_{i + 1:04d}.jpg", size=(6, 5), seed=i)
    splits = build("caltech256_30", root=str(tmp_path), n_per_class=10)
    assert splits.classes == ["ak47", "bat"]
    assert np.bincount(splits.test.labels).tolist() == [3, 1]
    assert len(splits.train) == 16 and len(splits.val) == 4


def test_omniglot_drawer_split(tmp_path, monkeypatch):
    target = tmp_path / "omniglot-py" / "images_background"
    for char in ("character01", "character02"):
        for drawer in range(1, 21):
            write_image(target / "Latin" / char / f"0{char[-1]}00_{drawer:02d}.png", size=(8, 8), mode="L")

    class FakeOmniglot:
        def __init__(self, root, background=True, **kwargs):
            assert background and "download" not in kwargs
            self.target_folder = str(target)

    monkeypatch.setattr(torchvision.datasets, "Omniglot", FakeOmniglot)
    splits = build("omniglot", root=str(tmp_path))
    assert splits.classes == ["Latin/character01", "Latin/character02"]
    assert len(splits.test) == 10 and all(int(Path(p).stem[-2:]) > 15 for p in splits.test.paths)
    assert len(splits.train) + len(splits.val) == 30


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(20 * 16, dtype=np.uint16).reshape(16, 20) * 200).astype(np.uint16)  # 0..63800
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")  # what PIL gives for a 16-bit PNG
    image, _ = FileImages([path], [0])[0]
    pixels = np.asarray(image)
    assert pixels.shape == (16, 20, 3) and pixels[..., 0].tolist() == (ramp // 257).astype(np.uint8).tolist()
    assert pixels.mean() < 200  # clipped, it was almost all 255


@pytest.mark.parametrize("scale", [1.0, 255.0], ids=["unit", "byte"])
def test_float_tiff_is_scaled_not_darkened(tmp_path, scale):
    ramp = np.linspace(0.0, 1.0, 16 * 20, dtype=np.float32).reshape(16, 20)
    path = tmp_path / "float.tif"
    Image.fromarray(ramp * scale, mode="F").save(path)
    with Image.open(path) as raw:
        assert raw.mode == "F"  # what PIL gives for a 32-bit float TIFF
    image, _ = FileImages([path], [0])[0]
    pixels = np.asarray(image)
    assert pixels[..., 0].tolist() == np.round(ramp * 255).astype(np.uint8).tolist()  # PIL's convert: all 0 or 1


def test_float_image_out_of_range_is_one_line(tmp_path):
    path = tmp_path / "wide.tif"
    Image.fromarray(np.full((8, 8), 1000.0, dtype=np.float32), mode="F").save(path)
    with pytest.raises(KitError) as excinfo:
        FileImages([path], [0])[0]
    assert str(path) in one_line_error(excinfo) and "scale it to [0, 1]" in one_line_error(excinfo)
