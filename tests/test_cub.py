"""CUB-200-2011: the loader on a tiny hand-written CUB layout, its errors, splits, transforms, losses, metrics,
the deterministic stand-in, the vision model, and short end-to-end runs through ``train_run``."""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from pipeline.config.params import ParamsError, parse_params
from pipeline.datasets.shared.base import DataError, TaskData
from pipeline.core.registry import DATASETS
from pipeline.methods.base import build_method
from pipeline.datasets.cub import standin as cub_standin
from pipeline.datasets.cub import task as cub_task
from pipeline.datasets.cub.prepared import H5_NAME
from pipeline.datasets.cub.sources import read_cub_index, write_cub_text_files
from pipeline.datasets.cub.standin import STANDIN_DIR
from pipeline.datasets.shared.aux_roles import AUX_ROLES_FILE
from pipeline.core.io import write_manifest
from pipeline.core.registry import MODELS
from pipeline.datasets.shared.splits import check_disjoint
from pipeline.engine.training import train_run
from tests.conftest import FixedLogits

CLASSES = ["001.Red_Tanager", "002.Green_Jay", "003.Blue_Grosbeak"]
ATTRIBUTES = ["has_bill_shape::cone", "has_wing_color::red", "has_wing_color::blue", "has_size::small",
              "has_pattern::striped"]
PER_CLASS = 4


def image_colour(c: int, i: int) -> tuple[int, int, int]:
    """A distinct flat colour per image, so the loaded pixels tell which file landed in which row."""
    return (30 + 50 * i, 40 + 80 * c, 220 - 40 * i)


def write_tiny_cub(root: Path) -> SimpleNamespace:
    """3 classes x 4 images (2 official-train each), 5 attributes, real JPEGs of varied sizes, one grey image,
    and one attribute line with extra fields, as in the real release."""
    paths, labels, is_train, colours = [], [], [], []
    for c, name in enumerate(CLASSES):
        (root / "images" / name).mkdir(parents=True)
        for i in range(PER_CLASS):
            rel = f"{name}/{name[4:]}_{i + 1:04d}_{100 + i}.jpg"
            colour = image_colour(c, i)
            img = Image.new("RGB", (24 + 6 * i, 18 + 4 * c), colour)
            if (c, i) == (2, 3):  # CUB has a few greyscale JPEGs: the loader must give RGB
                img = img.convert("L")
                colour = (img.getpixel((0, 0)),) * 3
            img.save(root / "images" / rel, format="JPEG", quality=95)
            paths.append(rel)
            labels.append(c)
            is_train.append(i % 2 == 0)
            colours.append(colour)
    attributes = np.random.default_rng(0).integers(0, 2, size=(len(paths), len(ATTRIBUTES)))
    write_cub_text_files(root, CLASSES, ATTRIBUTES, paths, labels, is_train, attributes)
    labels_file = root / "attributes" / "image_attribute_labels.txt"
    lines = labels_file.read_text().splitlines()
    lines[7] += " 0 12.5"  # e.g. the release's "2275 8 0 1 0 ..." lines: extra tokens after <time>
    labels_file.write_text("\n".join(lines) + "\n")
    return SimpleNamespace(root=root, paths=paths, labels=np.array(labels), is_train=np.array(is_train),
                           attributes=attributes, colours=np.array(colours, dtype=float))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> SimpleNamespace:
    return write_tiny_cub(tmp_path_factory.mktemp("cub") / "CUB_200_2011")


@pytest.fixture
def tiny_copy(tiny, tmp_path) -> SimpleNamespace:
    """A private copy for tests that break files."""
    root = tmp_path / "CUB_200_2011"
    shutil.copytree(tiny.root, root)
    return SimpleNamespace(**{**vars(tiny), "root": root})


def cub_params(root: Path | None = None, image_size: int = 32, method: str = "equal", split: dict | None = None,
               train: dict | None = None, methods: dict | None = None, **prepare):
    prep = {"image_size": image_size, **prepare}
    if root is not None:
        prep.update(source="path", root=str(root))
    raw = {"dataset": "cub", "method": method, "seeds": [0],
           "datasets": {"cub": {"prepare": prep, "split": split or {}, "train": train or {}}}}
    if methods:
        raw["methods"] = methods
    return parse_params(raw)


def prepare_and_load(params, out: Path):
    ds = DATASETS.get("cub")()
    out.mkdir(parents=True, exist_ok=True)
    ds.prepare(params.dataset_config, out)
    return ds, ds.load(out)


@pytest.fixture(scope="module")
def tiny_loaded(tiny, tmp_path_factory):
    """The tiny layout ingested at 32 px: (dataset, data, prepared folder)."""
    out = tmp_path_factory.mktemp("prepared")
    ds, data = prepare_and_load(cub_params(tiny.root), out)
    return ds, data, out


# ---------------------------------------------------------------------------------------------- loader


def test_loader_reads_the_cub_layout(tiny, tiny_loaded):
    _, data, out = tiny_loaded
    n = len(tiny.paths)
    assert sorted(p.name for p in out.iterdir()) == [H5_NAME]  # the real source leaves one file
    assert data.inputs.shape == (n, 3, 32, 32) and data.inputs.dtype == torch.uint8
    assert data.targets.shape == (n, 1 + len(ATTRIBUTES)) and data.targets.dtype == torch.float32
    assert data.task_names == ["species", *ATTRIBUTES]
    assert np.array_equal(data.targets[:, 0].numpy(), tiny.labels)  # 0-based, though the files are 1-based
    assert np.array_equal(data.targets[:, 1:].numpy(), tiny.attributes)  # the extra-field line parsed too
    assert np.array_equal(data.meta["is_train"], tiny.is_train)
    assert data.meta["num_classes"] == 3 and data.meta["class_names"] == CLASSES
    assert data.meta["source"] == "CUB-200-2011"
    assert "aux_roles" not in data.meta  # real data: nobody knows which attribute helps
    # Every row holds its own file's colour (resizing a flat JPEG keeps the colour up to JPEG error).
    mean_rgb = data.inputs.double().mean(dim=(2, 3)).numpy()
    assert np.abs(mean_rgb - tiny.colours).max() < 8
    # z-score statistics come from the official training images only
    train_px = data.inputs[torch.as_tensor(tiny.is_train)].double() / 255
    assert np.allclose(data.meta["mean"], train_px.mean(dim=(0, 2, 3)).numpy(), atol=1e-6)


@pytest.mark.parametrize("where", ["attributes/attributes.txt", "../attributes.txt"])
def test_attribute_names_are_found_where_the_release_and_users_put_them(tiny_copy, where):
    target = tiny_copy.root / where
    (tiny_copy.root / "attributes.txt").rename(target)
    assert read_cub_index(tiny_copy.root).attribute_names == ATTRIBUTES


@pytest.mark.parametrize("name", ["images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt",
                                  "attributes.txt", "attributes/image_attribute_labels.txt"])
def test_missing_file_is_named(tiny_copy, name):
    (tiny_copy.root / name).unlink()
    with pytest.raises(DataError, match=re.escape(f"{tiny_copy.root / name} is missing")):
        read_cub_index(tiny_copy.root)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing"])
def test_unreadable_image_is_named(tiny_copy, tmp_path, damage):
    path = tiny_copy.root / "images" / tiny_copy.paths[5]
    if damage == "garbage":
        path.write_bytes(b"this is not a JPEG")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.unlink()
    with pytest.raises(DataError, match=re.escape(tiny_copy.paths[5].split("/")[-1])):
        prepare_and_load(cub_params(tiny_copy.root), tmp_path / "out")


@pytest.mark.parametrize("file, edit, text", [
    ("image_class_labels.txt", lambda lines: lines[:-1], "image ids do not match"),
    ("train_test_split.txt", lambda lines: lines + ["99 1"], "image ids do not match"),
    ("image_class_labels.txt", lambda lines: lines[:-1] + ["12 7"], "class ids .7. are not in"),
    ("attributes/image_attribute_labels.txt", lambda lines: lines + ["42 1 0 3 1.0"], "image id 42 is not in"),
    ("attributes/image_attribute_labels.txt", lambda lines: lines[:-1], "has no line"),
    ("attributes/image_attribute_labels.txt", lambda lines: lines + lines[-1:], "has several lines"),
    ("images.txt", lambda lines: lines + ["3 other.jpg"], "id 3 appears twice"),
    ("images.txt", lambda lines: ["1 ../../etc/passwd"] + lines[1:], "must stay inside"),
])
def test_inconsistent_files_are_refused(tiny_copy, tmp_path, file, edit, text):
    path = tiny_copy.root / file
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")
    with pytest.raises(DataError, match=text):
        prepare_and_load(cub_params(tiny_copy.root), tmp_path / "out")


def test_malformed_prepared_file_is_named(tiny_loaded, tmp_path):
    ds, _, out = tiny_loaded
    bad = tmp_path / H5_NAME
    shutil.copy(out / H5_NAME, bad)
    with h5py.File(bad, "a") as f:
        del f["labels"]
        f["labels"] = np.zeros(5, dtype=np.int64)
    with pytest.raises(DataError, match=f"{bad}: labels"):
        ds.load(tmp_path)
    bad.write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="not a readable HDF5 file"):
        ds.load(tmp_path)
    with pytest.raises(DataError, match="cub.h5 is missing"):
        ds.load(tmp_path / "nowhere")


def test_path_source_needs_root():
    with pytest.raises(ParamsError, match=r"datasets\.cub\.prepare.*root is required .* data/raw/cub"):
        parse_params({"datasets": {"cub": {"prepare": {"source": "path", "root": None}}}})
    with pytest.raises(ParamsError, match="pretrained_weights needs backbone: resnet18"):
        parse_params({"datasets": {"cub": {"model": {"pretrained_weights": "w.pth"}}}})


# ---------------------------------------------------------------------------------------------- splits


def fake_task_data(num_classes: int = 5, per_class: int = 10) -> TaskData:
    labels = np.repeat(np.arange(num_classes), per_class)
    is_train = np.tile(np.arange(per_class) % 2 == 0, num_classes)
    targets = torch.zeros(len(labels), 3)
    targets[:, 0] = torch.from_numpy(labels).float()
    return TaskData(torch.zeros(len(labels), 3, 16, 16, dtype=torch.uint8), targets, ["species", "a", "b"],
                    {"num_classes": num_classes, "is_train": is_train})


def split(data: TaskData, **cfg):
    return DATASETS.get("cub")().make_splits(data, DATASETS.get("cub").SplitConfig(**cfg))


def test_k_shot_splits():
    data = fake_task_data()
    labels, is_train = data.targets[:, 0].long().numpy(), data.meta["is_train"]
    s = split(data, seed=3, k_shot=3, aux=4)
    check_disjoint(s)
    labelled = np.concatenate([np.setdiff1d(s["train"], s["unlabelled"]), s["aux"]])
    assert np.bincount(labels[labelled], minlength=5).tolist() == [3] * 5  # exactly K species labels per class
    assert len(s["aux"]) == 4 and is_train[labelled].all()
    # every official training image is trained on (attributes), the rest only without its species label
    assert np.array_equal(np.sort(np.concatenate([s["train"], s["aux"]])), np.flatnonzero(is_train))
    assert len(s["unlabelled"]) == is_train.sum() - 15
    official_test = np.flatnonzero(~is_train)
    assert (len(s["val"]), len(s["test"])) == (12, 13)  # 25 official test images, halved
    assert np.array_equal(np.sort(np.concatenate([s["val"], s["test"]])), official_test)
    again, other = split(data, seed=3, k_shot=3, aux=4), split(data, seed=4, k_shot=3, aux=4)
    assert all(np.array_equal(s[k], again[k]) for k in s)
    assert not all(np.array_equal(s[k], other[k]) for k in s)


def test_full_training_set_and_bad_sizes():
    data = fake_task_data()
    s = split(data, k_shot=0, aux=2)
    assert len(s["unlabelled"]) == 0
    assert np.array_equal(np.sort(np.concatenate([s["train"], s["aux"]])), np.flatnonzero(data.meta["is_train"]))
    with pytest.raises(ValueError, match="datasets.cub.split.aux = 15 leaves no training image"):
        split(data, k_shot=3, aux=15)
    with pytest.raises(ValueError, match="datasets.cub.split.k_shot = 6: class 0 has only 5"):
        split(data, k_shot=6, aux=1)


# ---------------------------------------------------------------------------------------------- stand-in


def test_standin_is_deterministic_and_in_the_cub_layout(tmp_path):
    settings = {"image_size": 16, "standin_num_classes": 4, "standin_images_per_class": 4, "standin_seed": 7}
    _, data = prepare_and_load(cub_params(**settings), tmp_path / "a")
    prepare_and_load(cub_params(**settings), tmp_path / "b")
    hashes = write_manifest(tmp_path / "a")
    assert hashes == write_manifest(tmp_path / "b")
    assert H5_NAME in hashes and sum(k.endswith(".jpg") for k in hashes) == 16
    assert AUX_ROLES_FILE in hashes  # the roles are part of the prepared data (and its manifest)
    _, other = prepare_and_load(cub_params(**{**settings, "standin_seed": 8}), tmp_path / "c")
    assert write_manifest(tmp_path / "c")[H5_NAME] != hashes[H5_NAME]
    index = read_cub_index(tmp_path / "a" / STANDIN_DIR)  # the same loader reads the raw stand-in
    assert len(index.image_ids) == 16 and index.attribute_names == data.task_names[1:]
    assert "stand-in" in data.meta["source"]
    assert data.meta["is_train"].sum() == 8 and data.meta["num_classes"] == 4
    roles = data.meta["aux_roles"]
    assert list(roles) == data.task_names[1:] and set(roles.values()) == {"helpful", "irrelevant", "harmful"}
    # the raw folder is a plain CUB layout: ingested as real data it has no roles
    _, as_real = prepare_and_load(cub_params(tmp_path / "a" / STANDIN_DIR, image_size=16), tmp_path / "d")
    assert "aux_roles" not in as_real.meta
    assert torch.equal(as_real.targets, data.targets)


@pytest.fixture(scope="module")
def standin_attributes(tmp_path_factory):
    """A 20-species stand-in at 16 px (30 images per species): species labels, attributes, is_train, roles."""
    out = tmp_path_factory.mktemp("standin")
    _, data = prepare_and_load(cub_params(image_size=16, standin_num_classes=20, standin_images_per_class=30), out)
    return (data.targets[:, 0].long().numpy(), data.targets[:, 1:].numpy().astype(int), data.meta["is_train"],
            data.meta["aux_roles"])


def test_standin_roles_by_attribute_group(standin_attributes):
    roles = standin_attributes[-1]
    by_group: dict[str, set[str]] = {}
    for name, role in roles.items():
        by_group.setdefault(name.split("::")[0], set()).add(role)
    assert by_group == {"has_shape": {"helpful"}, "has_primary_color": {"helpful"}, "has_pattern": {"helpful"},
                        "has_size": {"helpful"}, "has_decoy_shape": {"harmful"}, "has_decoy_color": {"harmful"},
                        "has_decoy_pattern": {"harmful"}, "has_random_tag": {"irrelevant"}}


def species_dependence(species: np.ndarray, attribute: np.ndarray) -> float:
    """p-value of a chi-square test of independence between the species and a 0/1 attribute."""
    from scipy.stats import chi2_contingency

    table = np.zeros((species.max() + 1, 2))
    np.add.at(table, (species, attribute), 1)
    return float(chi2_contingency(table[table.sum(1) > 0]).pvalue)


def test_standin_helpful_attributes_predict_the_species_and_the_others_do_not(standin_attributes):
    """Helpful attributes are species traits (10% label noise); irrelevant ones are coin flips and harmful ones
    describe a decoy drawn independently of the species: a chi-square test of independence against the species."""
    species, attributes, _, roles = standin_attributes
    for j, (name, role) in enumerate(roles.items()):
        p = species_dependence(species, attributes[:, j])
        if role == "helpful":
            assert p < 1e-20, (name, p)
            counts = np.zeros((species.max() + 1, 2))
            np.add.at(counts, (species, attributes[:, j]), 1)
            assert (counts.argmax(1)[species] == attributes[:, j]).mean() > 0.85, name  # as 10% noise allows
        else:
            assert p > 1e-3, (name, role, p)
    tags = [j for j, r in enumerate(roles.values()) if r == "irrelevant"]
    assert abs(attributes[:, tags].mean() - 0.5) < 0.05  # fair coins


def test_standin_decoy_is_drawn_in_its_colour(tmp_path):
    """The harmful attributes are visible: an image whose decoy is red has more red pixels than the object
    alone accounts for (checked on the generator with the object's colour fixed)."""
    rng = np.random.default_rng(0)
    red = np.asarray(cub_standin.STANDIN_COLOURS["red"], float)

    def reddish(decoy_colour: str) -> float:
        img = np.asarray(cub_standin._standin_image(rng, "circle", "blue", "solid", "large", "centre",
                                                    ("square", decoy_colour, "solid")), float)
        return float((np.linalg.norm(img - red, axis=-1) < 80).mean())

    assert np.mean([reddish("red") for _ in range(10)]) > np.mean([reddish("green") for _ in range(10)]) + 0.015


# ---------------------------------------------------------------------------------------------- transforms


def test_batch_transform_crops_flips_and_normalises(tiny_loaded):
    ds, data, _ = tiny_loaded
    x = data.inputs[:6]
    crop = round(32 * 224 / 256)
    mean, std = torch.tensor(data.meta["mean"]).view(1, 3, 1, 1), torch.tensor(data.meta["std"]).view(1, 3, 1, 1)
    norm = ((x.double() / 255 - mean) / std).float()
    standardize = ds.build_model(data, ds.ModelConfig()).standardize  # the network carries the normalisation
    ev = standardize(ds.batch_transform(x, None, train=False)[0])
    off = (32 - crop) // 2
    assert ev.shape == (6, 3, crop, crop) and ev.dtype == torch.float32
    assert torch.allclose(ev, norm[:, :, off:off + crop, off:off + crop], atol=1e-5)

    a = standardize(ds.batch_transform(x, None, train=True, generator=torch.Generator().manual_seed(0))[0])
    b = standardize(ds.batch_transform(x, None, train=True, generator=torch.Generator().manual_seed(0))[0])
    assert a.shape == (6, 3, crop, crop) and torch.equal(a, b)
    # every output is some crop of its own image, possibly mirrored
    for i in range(6):
        windows = [norm[i, :, oy:oy + crop, ox:ox + crop] for oy in range(32 - crop + 1) for ox in range(32 - crop + 1)]
        assert any(torch.allclose(a[i], w, atol=1e-5) or torch.allclose(a[i], w.flip(-1), atol=1e-5) for w in windows)
    # the draws differ by seed
    noisy = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    c = ds.batch_transform(noisy, None, train=True, generator=torch.Generator().manual_seed(0))[0]
    d = ds.batch_transform(noisy, None, train=True, generator=torch.Generator().manual_seed(1))[0]
    assert not torch.equal(c, d)


@pytest.mark.cuda
def test_batch_transform_on_cuda_matches_cpu(tiny_loaded):
    ds, data, _ = tiny_loaded
    x = data.inputs
    cpu = ds.batch_transform(x, None, train=True, generator=torch.Generator().manual_seed(5))[0]
    gpu = ds.batch_transform(x.cuda(), None, train=True, generator=torch.Generator().manual_seed(5))[0]
    assert gpu.is_cuda and torch.allclose(cpu, gpu.cpu(), atol=1e-6)


def test_per_task_losses():
    ds = DATASETS.get("cub")()
    logits, attr_logits = torch.randn(4, 3), torch.randn(4, 5)
    targets = torch.cat([torch.tensor([[0.0], [2.0], [1.0], [2.0]]), torch.randint(0, 2, (4, 5)).float()], 1)
    losses = ds.per_task_losses((logits, attr_logits), targets)
    assert losses.shape == (4, 6)
    assert torch.allclose(losses[:, 0], F.cross_entropy(logits, targets[:, 0].long(), reduction="none"))
    p = torch.sigmoid(attr_logits)
    expected = -(targets[:, 1:] * p.log() + (1 - targets[:, 1:]) * (1 - p).log())
    assert torch.allclose(losses[:, 1:], expected, atol=1e-5)


def test_metrics_top1_top3_by_hand(tiny_loaded, monkeypatch):
    ds, data, _ = tiny_loaded
    monkeypatch.setattr(cub_task, "EVAL_CHUNK", 2)  # several chunks
    ranked = torch.tensor([3.0, 2.0, 1.0, 0.0])
    logits = torch.stack([torch.tensor([5.0, 1.0, 0.0, -1.0]), ranked, ranked, ranked, ranked.flip(0)])
    labels = torch.tensor([0, 1, 2, 3, 0])  # ranks of the true class: 1, 2, 3, 4, 4
    fake = TaskData(data.inputs[:5], torch.cat([labels[:, None].float(), torch.zeros(5, 5)], 1), data.task_names,
                    data.meta)
    model = FixedLogits(logits, aux_outputs=5).train()
    m = ds.metrics(model, fake, torch.arange(5))
    assert m["top1"] == pytest.approx(20.0) and m["top3"] == pytest.approx(60.0)
    assert m["main_loss"] == pytest.approx(float(F.cross_entropy(logits, labels)))
    assert model.modes == [False] * 3 and model.training  # evaluated in eval mode, mode restored


# ---------------------------------------------------------------------------------------------- model


def test_vision_model_backbones_and_local_weights(tmp_path):
    build = MODELS.get("image_multihead")
    small = build(num_classes=3, num_attributes=5, backbone="small_cnn", width=4)
    species, attrs = small(torch.randn(2, 3, 28, 28))
    assert species.shape == (2, 3) and attrs.shape == (2, 5)
    shared = {id(p) for p in small.shared_parameters()}
    assert {id(p) for p in small.last_shared_parameters()} < shared
    assert not shared & {id(p) for p in small.species_head.parameters()}

    reference = torchvision.models.resnet18(weights=None)  # saved to a local file, as users would
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    net = build(num_classes=3, num_attributes=5, backbone="resnet18", pretrained_weights=str(tmp_path / "resnet18.pth"))
    assert torch.equal(net.backbone.conv1.weight, reference.conv1.weight)
    assert net.encode(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    assert {id(p) for p in net.last_shared_parameters()} == {id(p) for p in net.backbone.layer4[-1].parameters()}
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        build(num_classes=3, num_attributes=5, backbone="resnet18", pretrained_weights=str(tmp_path / "none.pth"))


# ---------------------------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("method", ["equal", "auxilearn_nonlinear", "auxilearn_labels", "maxl"])
def test_end_to_end_on_the_tiny_layout(tiny, tmp_path, method):
    """Given attributes (equal, auxilearn) and label learning (a generated task per species, AuxiLearn Table 3's
    CUB setting; MAXL) on the real layout."""
    params = cub_params(tiny.root, method=method, split={"k_shot": 0, "aux": 2},
                        train={"steps": 5, "eval_every": 5, "batch_size": 4},
                        methods={"bilevel": {"hyper_every": 2}})  # so the IFT step runs within 5 steps
    ds, data = prepare_and_load(params, tmp_path / "prepared")
    splits = ds.make_splits(data, params.split)
    assert {k: len(v) for k, v in splits.items()} == {"train": 4, "aux": 2, "val": 3, "test": 3, "unlabelled": 0}
    result = train_run(ds, data, splits, params, 0, device=torch.device("cpu"))
    if method.startswith("auxilearn"):
        assert result.history["hyper_step"] == [2, 4]
        assert all(np.isfinite(result.history["hypergrad_norm"]))
    head = build_method(method, data.num_tasks, params, ds, data).head_outputs()
    if method in ("auxilearn_labels", "maxl"):
        net = ds.build_model(data, params.profile.model, aux_outputs=head)
        (species, attributes), aux = net.decode(net.encode(torch.rand(2, 3, 28, 28)))
        psi = head // ds.label_groups(data)
        assert ds.label_groups(data) == data.meta["num_classes"] and psi >= 2 and aux.shape == (2, psi * 3)
        assert species.shape == (2, 3) and set(result.method_state_final)  # the generator's state was trained
    model = ds.build_model(data, params.profile.model, aux_outputs=head)
    model.load_state_dict(result.model_state)
    m = ds.metrics(model, data, torch.as_tensor(splits["test"]))
    assert set(m) == {"top1", "top3", "main_loss"} and all(np.isfinite(v) for v in m.values())
    assert 0 <= m["top1"] <= m["top3"] <= 100


def test_real_data_is_resized_to_256_by_default():
    real = parse_params({"datasets": {"cub": {"prepare": {"source": "path"}}}})
    assert real.datasets.cub.prepare.resolved_image_size == 256  # App. B.1
    assert parse_params({}).datasets.cub.prepare.resolved_image_size == 40  # the small stand-in
