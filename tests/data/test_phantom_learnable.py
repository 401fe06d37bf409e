"""The phantom's findings are learnable: a small CNN trained on CPU separates them (1,000 studies rendered at
64 px in the regular suite; 2,000 rendered at 128 px, the size real films are read at, among the slow tests)."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cxr_audit.classifier.small_cnn import predict_probabilities, train_small_classifier
from cxr_audit.data import phantom
from cxr_audit.data.images import load_resized
from cxr_audit.data.phantom.dataset import write_phantom_dataset
from cxr_audit.data.readers import read_manifest


@pytest.mark.slow  # training to an accuracy target (about 20 s at 64 px)
@pytest.mark.parametrize("studies,size,epochs", [(1000, 64, 6), (2000, 128, 4)])
def test_small_cnn_reaches_auroc_above_0_9_on_most_findings(tmp_path, studies, size, epochs):
    torch.set_num_threads(2)
    write_phantom_dataset(tmp_path / "ds", studies, size=size, seed=11, progress=False)
    manifest = read_manifest(tmp_path / "ds" / "labels.csv", "chexpert")
    findings = list(phantom.PHANTOM_FINDINGS)

    def arrays(split):
        part = manifest.split(split)
        images = np.stack([load_resized(part.resolve_image(p), 64) for p in part.frame["path"]])[:, None]
        return images, part.frame[findings].to_numpy(np.float32)

    (x_train, y_train), (x_test, y_test) = arrays("train"), arrays("test")
    net = train_small_classifier(x_train, y_train, epochs=epochs, seed=0)
    probabilities = predict_probabilities(net, x_test)
    auroc = {f: roc_auc_score(y_test[:, j], probabilities[:, j]) for j, f in enumerate(findings)}
    print("test AUROC:", {f: round(v, 3) for f, v in auroc.items()})
    assert sum(v > 0.9 for v in auroc.values()) >= 6, auroc
