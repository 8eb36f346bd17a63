"""The harder questions for kappa (issue 14, item 3): the constructed inputs, the AUROC helper, the
no-head baselines, and what a run writes (uncertainty.json, report.md, figures, the printed summary)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import mannwhitneyu

from vi_simsiam import baselines as B
from vi_simsiam import cli, evaluation
from vi_simsiam import uncertainty as U
from vi_simsiam import uncertainty_probes as P
from vi_simsiam.augmentations import DigitsAugmentation

SHAPES = [(6, 1, 8, 8), (4, 3, 32, 32), (3, 3, 20, 24)]


def _images(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------- mixing
def test_partners_are_of_another_class_and_seeded():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0, 1])
    partners = P.partner_indices(labels, seed=3)
    assert (labels[partners] != labels).all()
    assert torch.equal(partners, P.partner_indices(labels, seed=3))
    with pytest.raises(ValueError, match="two classes"):
        P.partner_indices(torch.zeros(5, dtype=torch.long))


def test_mixing_ratios_are_exact():
    a, b = _images((5, 1, 8, 8), 0), _images((5, 1, 8, 8), 1)
    assert torch.equal(P.mix(a, b, 0.0), a) and torch.equal(P.mix(a, b, 1.0), b)
    assert torch.equal(P.mix(a, b, 0.5), (a + b) / 2)
    for ratio in P.MIXING_RATIOS:
        torch.testing.assert_close(P.mix(a, b, ratio), (1 - ratio) * a + ratio * b, rtol=0, atol=0)
    assert P.MIXING_RATIOS[0] == 0.0 and P.MIXING_RATIOS[-1] == 0.5
    with pytest.raises(ValueError, match="ratio"):
        P.mix(a, b, 1.5)


# ---------------------------------------------------------------------------- out-of-distribution inputs
@pytest.mark.parametrize("shape", SHAPES)
def test_ood_inputs_have_the_images_shape_and_range(shape):
    images = _images(shape)
    for kind in P.OOD_KINDS:
        out = P.out_of_distribution(images, kind, seed=1)
        assert out.shape == images.shape and out.dtype == torch.float32, kind
        assert 0 <= out.min() and out.max() <= 1 and torch.isfinite(out).all(), kind
        assert torch.equal(out, P.out_of_distribution(images, kind, seed=1)), kind
        assert not torch.equal(out, images), kind


def test_ood_inputs_are_what_they_say():
    images = _images((4, 3, 8, 8))
    assert torch.equal(P.out_of_distribution(images, "inverted"), 1 - images)
    shuffled = P.out_of_distribution(images, "shuffled_pixels")
    # the same pixels (colour triples kept together), in another order
    assert torch.equal(shuffled.flatten(2).sort(2).values, images.flatten(2).sort(2).values)
    triples = lambda x: sorted(map(tuple, x.flatten(2).transpose(1, 2).reshape(-1, 3).tolist()))
    assert triples(shuffled) == triples(images)
    blank = P.out_of_distribution(images, "blank")
    assert torch.equal(blank, blank[..., :1, :1].expand_as(blank))
    assert torch.equal(P.out_of_distribution(images, "rotated_90"), torch.rot90(images, 1, (-2, -1)))
    assert torch.equal(P.out_of_distribution(images[..., :6], "rotated_90"), images[..., :6].flip(-2))
    digits = torch.zeros(400, 1, 8, 8)
    digits[:, :, 2:6, 3:5] = 1.0
    noise = P.out_of_distribution(digits, "gaussian_noise")  # N(mean, std) of the pixels, clamped to [0, 1]
    mean, std = digits.mean().item(), digits.std().item()
    below = 0.5 * math.erfc(mean / std / math.sqrt(2))
    assert (noise == 0).double().mean().item() == pytest.approx(below, abs=0.02)


def test_letters_look_like_digits_do():
    letters = P.out_of_distribution(torch.zeros(20, 1, 8, 8), "letters", seed=0)
    assert (letters.amax(dim=(1, 2, 3)) > 0.5).all()  # ink in every image
    assert (letters.mean(dim=(1, 2, 3)) < 0.7).all()  # and background
    assert len({tuple(x.flatten().tolist()) for x in letters}) > 5  # several letters
    rgb = P.out_of_distribution(torch.zeros(3, 3, 32, 32), "letters", seed=0)
    assert rgb.shape == (3, 3, 32, 32) and rgb.flatten(2).std(2).min() > 0


# ---------------------------------------------------------------------------- augmentation strength
def test_batched_digits_augmentation_is_digits_augmentation():
    """augment_digits given DigitsAugmentation's own random numbers gives its images, image by image."""
    images = _images((12, 1, 8, 8))
    for strength, component in ((1.0, "all"), (2.0, "all"), (1.5, "geometry"), (2.0, "erasing")):
        augmentation = P.digits_augmentation_at(strength, component)
        for i, image in enumerate(images):
            torch.manual_seed(100 + i)
            expected = augmentation(image)
            torch.manual_seed(100 + i)
            uniforms = torch.rand(1, 9)
            noise = torch.randn(1, 1, 8, 8) if uniforms[0, 5] < augmentation.noise_p else torch.zeros(1, 1, 8, 8)
            got = P.augment_digits(image[None], augmentation, uniforms, noise)[0]
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_strength_one_is_the_training_augmentation_and_zero_is_none():
    assert vars(P.digits_augmentation_at(1.0)) == vars(DigitsAugmentation())
    for kind, shape in (("digits", (5, 1, 8, 8)), ("cifar", (5, 3, 32, 32)), ("imagenet", (2, 3, 40, 40))):
        images = _images(shape)
        size = shape[-1]
        for component in ("all", *P.AUGMENTATION_COMPONENTS[kind]):
            torch.testing.assert_close(P.augmentation_at(kind, size, 0.0, component)(images, 0), images)
        change = [
            (P.augmentation_at(kind, size, s)(images, 7) - images).abs().mean().item() for s in (0.0, 1.0, 2.0)
        ]
        assert change[0] < 1e-6 < change[1], (kind, change)
        state = torch.get_rng_state()
        once = P.augmentation_at(kind, size, 1.0)(images, 3)
        assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is untouched
        assert torch.equal(once, P.augmentation_at(kind, size, 1.0)(images, 3)) and once.shape == images.shape
    with pytest.raises(ValueError, match="no part"):
        P.augmentation_at("cifar", 32, 1.0, "blur")


def test_stronger_digits_augmentation_moves_images_further():
    images = _images((200, 1, 8, 8))
    for component in ("all", "geometry", "noise"):
        change = [(P.augmentation_at("digits", 8, s, component)(images, 1) - images).abs().mean().item()
                  for s in (0.5, 1.0, 2.0)]
        assert change[0] < change[1] < change[2], (component, change)


# ---------------------------------------------------------------------------- AUROC and baselines
def test_auroc_is_mann_whitney_u_over_the_pairs():
    rng = np.random.default_rng(0)
    positive, negative = rng.integers(0, 6, 40).astype(float), rng.integers(0, 5, 30).astype(float)  # many ties
    u = mannwhitneyu(positive, negative).statistic
    assert U.auroc(positive, negative) == pytest.approx(u / (40 * 30), abs=1e-12)
    pairs = (positive[:, None] > negative[None]).mean() + 0.5 * (positive[:, None] == negative[None]).mean()
    assert U.auroc(positive, negative) == pytest.approx(pairs, abs=1e-12)
    assert U.auroc([2.0, 3.0], [1.0]) == 1.0 and U.auroc([1.0], [2.0, 3.0]) == 0.0
    assert U.auroc([1.0, 1.0], [1.0]) == 0.5 and math.isnan(U.auroc([], [1.0]))
    # the same number as the existing correctness AUROC (scikit-learn's)
    kappa, correct = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), torch.tensor([0, 1, 0, 1, 1, 1]).bool()
    assert U.auroc(kappa[correct], kappa[~correct]) == U.kappa_predicts_correctness(kappa, correct)["auroc"]


def test_neighbour_similarity_and_knn_margin():
    generator = torch.Generator().manual_seed(0)
    bank, query = torch.randn(50, 8, generator=generator), torch.randn(7, 8, generator=generator)
    cosines = torch.nn.functional.cosine_similarity(query[:, None], bank[None], dim=2)
    expected = cosines.sort(dim=1, descending=True).values[:, :5].mean(1)
    torch.testing.assert_close(B.neighbour_similarity(query, bank, k=5), expected)
    shares = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2], [0.0, 0.1, 0.9]])
    torch.testing.assert_close(B.knn_margin(shares), torch.tensor([0.5, 0.0, 0.8]))


class _StandInScorer:
    """A 'model' whose kappa is an image's ink and whose baselines are noise: the analysis must
    report kappa finding blends and blanks better, and say that it beats them."""

    names = ("kappa", *B.BASELINES)

    def __call__(self, images):
        generator = torch.Generator().manual_seed(int(images.sum().item() * 1000) % 2**31)
        ink = images.double().flatten(1).mul(2).sub(1).abs().mean(1)  # far from grey = certain
        return {"kappa": ink, **{name: torch.rand(len(images), generator=generator).double() for name in B.BASELINES}}


def test_harder_questions_keys_and_verdict():
    generator = torch.Generator().manual_seed(0)
    images = (torch.rand(60, 1, 8, 8, generator=generator) > 0.5).float()
    labels = torch.arange(60) % 3
    correct = {"knn": torch.arange(60) % 7 != 0, "linear": torch.ones(60, dtype=torch.bool)}
    result = U.harder_questions(_StandInScorer(), images, labels, correct, "digits", 8)
    assert set(result) == {"num_images", "scores", "correctness", "num_wrong", "mixing", "ood", "augmentation",
                           "summary", "kappa_beats"}
    assert result["num_wrong"] == {"knn": 9, "linear": 0}
    assert set(result["summary"]) == set(U.SUMMARY_STATISTICS)
    assert all(set(row) == set(_StandInScorer.names) for row in result["summary"].values())
    assert math.isnan(result["summary"]["linear_correctness"]["kappa"])  # no wrong prediction: undefined
    assert result["kappa_beats"]["linear_correctness"]["knn_margin"] is None
    mixing = result["mixing"]["scores"]["kappa"]
    assert mixing["auroc"][0] == 0.5 and mixing["auroc"][-1] > 0.95 and mixing["spearman"] < -0.5
    assert result["ood"]["kinds"]["blank"]["kappa"]["auroc"] > 0.6
    assert result["kappa_beats"]["mixed_vs_clean"] == {name: True for name in B.BASELINES}
    assert set(result["augmentation"]["components"]) == {"all", *P.AUGMENTATION_COMPONENTS["digits"]}
    assert len(result["augmentation"]["components"]["all"]["kappa"]["mean"]) == len(P.AUGMENTATION_STRENGTHS)
    assert len(result["augmentation"]["components"]["noise"]["kappa"]["mean"]) == len(P.COMPONENT_STRENGTHS)
    json.dumps(result)  # uncertainty.json holds it as it is


# ---------------------------------------------------------------------------- what a run writes
TINY = ["--dim", "32", "--pred-dim", "16", "--proj-hidden-dim", "32", "--kappa-hidden-dim", "16", "--threads", "1",
        "--epochs", "1", "--warmup-epochs", "1", "--batch-size", "128"]


@pytest.fixture(scope="module")
def evaluated_runs(tmp_path_factory):
    """A 1-epoch VI-SimSiam and SimSiam run each, evaluated as the main job is (probes on 120 images)."""
    root = tmp_path_factory.mktemp("probe_runs")
    threads, probe_images = torch.get_num_threads(), evaluation.PROBE_IMAGES
    printed = {}
    evaluation.PROBE_IMAGES = 120
    try:
        for distribution in ("power_spherical", "none"):
            import contextlib
            import io

            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                assert cli.main(["pretrain", *TINY, "--distribution", distribution,
                                 "--output-dir", str(root / distribution)]) == 0
            printed[distribution] = out.getvalue()
    finally:
        torch.set_num_threads(threads)
        evaluation.PROBE_IMAGES = probe_images
    return root, printed


def test_vi_simsiam_run_writes_the_harder_questions(evaluated_runs):
    root, printed = evaluated_runs
    run = root / "power_spherical"
    probes = json.loads((run / "uncertainty.json").read_text())["probes"]
    assert probes["num_images"] == 120 and probes["scores"] == ["kappa", *B.BASELINES]
    assert set(probes["ood"]["kinds"]) == set(P.OOD_KINDS) and probes["mixing"]["ratios"] == list(P.MIXING_RATIOS)
    for row in probes["summary"].values():
        assert all(0 <= value <= 1 or math.isnan(value) for value in row.values())
    eval_json = json.loads((run / "eval.json").read_text())
    assert eval_json["probes"]["summary"] == probes["summary"] and "kappa_beats" in eval_json["probes"]
    assert "corruption_ratio" in eval_json  # the existing numbers are still there
    report = (run / "report.md").read_text()
    for section in ("## Harder questions", "### Ambiguous inputs", "### Out-of-distribution inputs",
                    "### Augmentation strength", "kappa beats neighbour similarity on", "## Accuracy against kappa",
                    "figures/probe_examples.png"):
        assert section in report, section
    for figure in ("probe_examples", "probe_mixing", "probe_ood", "probe_augmentation", "lowest_kappa"):
        assert (run / "figures" / f"{figure}.png").stat().st_size > 1000, figure
    out = printed["power_spherical"]
    assert "AUROC (certain vs uncertain)" in out and "kappa beats view agreement on" in out
    table = [line for line in out.splitlines() if line.startswith("  clean vs mixed 50/50")]
    assert len(table) == 1 and len(table[0].split()[-4:]) == 4


def test_simsiam_run_gets_the_baselines_only(evaluated_runs):
    root, printed = evaluated_runs
    run = root / "none"
    result = json.loads((run / "uncertainty.json").read_text())
    assert "kappa" not in result and result["probes"]["scores"] == list(B.BASELINES)
    assert "kappa_beats" not in result["probes"]
    report = (run / "report.md").read_text()
    assert "## Harder questions" in report and "no kappa head" in report and "Accuracy against kappa" not in report
    out = printed["none"]
    assert "AUROC (certain vs uncertain)" in out and "kappa beats" not in out and "kappa on held-out" not in out
    assert (run / "figures" / "probe_augmentation.png").is_file()


def test_a_small_held_out_split_gets_no_harder_questions():
    """A split of fewer than MIN_PROBE_IMAGES (a smoke run on fake data) is skipped, and says so."""
    from vi_simsiam.report import probe_markdown, probe_summary_lines

    assert evaluation.probe_skip_reason(evaluation.MIN_PROBE_IMAGES) is None
    reason = evaluation.probe_skip_reason(16)
    assert "only 16 held-out images" in reason and str(evaluation.MIN_PROBE_IMAGES) in reason
    probes = {"skipped": reason}
    assert probe_summary_lines(probes) == [f"  harder questions (mixed, out-of-distribution, augmented inputs) "
                                           f"skipped: {reason}"]
    assert f"Skipped: {reason}." in probe_markdown(probes, kappa=True)
