"""Each supported model format loads, with a tiny real network saved in that format."""

import warnings

import numpy as np
import pytest
import torch
import yaml

from cxr_audit.classifier.loading import load_model
from cxr_audit.classifier.small_cnn import SmallCXRNet
from cxr_audit.errors import UserInputError

NAMES = ["Cardiomegaly", "Effusion", "Pneumothorax"]
SIZE = 32


@pytest.fixture()
def net():
    torch.manual_seed(0)
    return SmallCXRNet(len(NAMES), width=4).eval()


def write_card(path, **fields):
    card = {"input_size": SIZE, "output_names": NAMES, **fields}
    path.with_name(path.name + ".card.yaml").write_text(yaml.safe_dump(card))


def images(n=3):
    return torch.rand(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def expected(net, x):
    with torch.inference_mode():
        return torch.sigmoid(net(x))


def test_torchscript(tmp_path, net):
    path = tmp_path / "model.ts"
    torch.jit.script(net).save(str(path))
    write_card(path)
    model = load_model(path)
    assert model.format == "torchscript" and model.concepts == ["Cardiomegaly", "Pleural Effusion", "Pneumothorax"]
    assert torch.allclose(model.predict(images()), expected(net, images()), atol=1e-6)
    assert len(model.sha256) == 64 and model.has_dropout  # scripted Dropout found by its original name
    x = images()
    model.set_mc_dropout(True)
    assert not torch.allclose(model.predict(x), model.predict(x))


def test_onnx(tmp_path, net):
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (images(1),), str(path), dynamo=False, input_names=["image"],
                          dynamic_axes={"image": {0: "batch"}})
    write_card(path)
    model = load_model(path)
    assert model.format == "onnx"
    assert torch.allclose(model.predict(images()), expected(net, images()), atol=1e-5)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_torchvision_state_dict_and_safetensors(tmp_path, suffix):
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=3).eval()
    path = tmp_path / f"model{suffix}"
    if suffix == ".pt":
        torch.save(reference.state_dict(), path)
    else:
        from safetensors.torch import save_file
        save_file(reference.state_dict(), str(path))
    write_card(path, architecture="resnet18", channels=3, normalization="imagenet")
    model = load_model(path)
    x = images()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(model.predict(x), expected(reference, (x.expand(-1, 3, -1, -1) - mean) / std), atol=1e-5)
    assert model.has_dropout is False


def test_torchxrayvision_op_norm_is_undone(tmp_path):
    import torchxrayvision as xrv

    torch.manual_seed(0)
    thresholds = torch.tensor([0.3, 0.05, 0.6])
    full = xrv.models.DenseNet(num_classes=3, op_threshs=thresholds).eval()
    with torch.no_grad():  # a random head saturates at 0/1 on [-1024, 1024] inputs; keep logits moderate
        full.classifier.weight.mul_(1e-4)
    path = tmp_path / "xrv.pt"
    torch.save(full.state_dict(), path)
    write_card(path, input_size=64)
    model = load_model(path)
    assert model.format == "torchxrayvision" and model.card.normalization == "xrv"
    assert model.card.thresholds["Pleural Effusion"] == pytest.approx(0.05)
    x = torch.rand(2, 1, 64, 64)
    with torch.inference_mode():
        normed = full(x * 2048 - 1024)  # xrv's own output: op_norm applied, 0.5 at each threshold
        full.op_threshs = None
        raw = torch.sigmoid(full(x * 2048 - 1024))
    assert torch.allclose(model.predict(x), raw, atol=1e-5)
    assert not torch.allclose(normed, raw, atol=1e-3)
    assert any("op_norm is undone" in note for note in model.notes)


def test_pickled_model_is_refused_by_default_and_loads_when_allowed(tmp_path, net):
    path = tmp_path / "model.pkl.pt"
    torch.save(net, path)
    write_card(path)
    with pytest.raises(UserInputError, match="arbitrary code"):
        load_model(path)
    write_card(path, format="pickle")
    with pytest.raises(UserInputError, match="--allow-pickle"):
        load_model(path)
    model = load_model(path, allow_pickle=True)
    assert torch.allclose(model.predict(images()), expected(net, images()), atol=1e-6)
    assert model.has_dropout


def test_output_shape_mismatch_is_a_clear_error(tmp_path, net):
    path = tmp_path / "model.ts"
    torch.jit.script(net).save(str(path))
    path.with_name(path.name + ".card.yaml").write_text(yaml.safe_dump(
        {"input_size": SIZE, "output_names": ["Cardiomegaly", "Edema"]}))
    with pytest.raises(UserInputError, match=r"returns 3 outputs per image .* names 2"):
        load_model(path)


def test_bad_card_values_are_reported_by_key(tmp_path, net):
    path = tmp_path / "model.ts"
    torch.jit.script(net).save(str(path))
    path.with_name(path.name + ".card.yaml").write_text("input_size: 32\noutput_names: [Cardiomegally, null, Edema]\n")
    with pytest.raises(UserInputError, match=r"key 'output_names'.*Cardiomegally"):
        load_model(path)


def test_mc_dropout_varies_predictions_only_when_enabled(tmp_path, net):
    path = tmp_path / "model.pt"
    torch.save(net, path)
    write_card(path, format="pickle")
    model = load_model(path, allow_pickle=True)
    x = images(4)
    model.set_mc_dropout(True)
    samples = np.stack([model.predict(x).detach().numpy() for _ in range(5)])
    assert samples.std(axis=0).min() > 0  # every prediction varies (tiny: the net is untrained)
    model.set_mc_dropout(False)
    again = np.stack([model.predict(x).detach().numpy() for _ in range(3)])
    assert again.std(axis=0).max() < 1e-6  # CPU kernels are not bit-exact run to run


def test_training_to_convergence_stops_early_and_keeps_the_best_epoch(tmp_path):
    from cxr_audit.classifier.small_cnn import masked_bce, save_classifier, train_to_convergence

    rng = np.random.default_rng(0)
    labels = (rng.random((160, 2)) < 0.5).astype(np.float32)
    images = rng.normal(0.5, 0.1, (160, 1, 32, 32)).astype(np.float32)
    images[:, :, :16] += 0.3 * labels[:, 0, None, None, None]  # concept 0 is visible; concept 1 is noise
    train, val = slice(0, 120), slice(120, 160)
    net, record = train_to_convergence(images[train], labels[train], images[val], labels[val], max_epochs=40,
                                       patience=3, width=4, seed=0)
    assert record.epochs_run == len(record.validation_loss) <= 40
    assert record.epochs_run - record.best_epoch <= 3
    best = min(record.validation_loss)
    assert record.validation_loss[record.best_epoch - 1] == best
    with torch.inference_mode():  # the returned weights are the best epoch's
        loss = float(masked_bce(net(torch.tensor(images[val])), torch.tensor(labels[val])))
    assert loss == pytest.approx(best, rel=1e-5)
    again, _ = train_to_convergence(images[train], labels[train], images[val], labels[val], max_epochs=40,
                                    patience=3, width=4, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))
    # the card records how the model was trained
    save_classifier(net, tmp_path / "m.safetensors", ["Cardiomegaly", "Edema"], 32, training=record.card_entry())
    card = yaml.safe_load((tmp_path / "m.safetensors.card.yaml").read_text())
    assert card["training"]["best_epoch"] == record.best_epoch
    assert load_model(tmp_path / "m.safetensors").card.training["epochs_run"] == record.epochs_run
