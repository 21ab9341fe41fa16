"The shipped prior: a small safetensors file that loads without unpickling and refines the bundled sample."

import torch

from boxrefine.boxes import elementwise_iou
from boxrefine.data import NoiseConfig, load_sample
from boxrefine.inference import gated_at, refine_records
from boxrefine.prior import load_prior, prior_info, prior_path


def test_the_prior_ships_small_with_its_provenance():
    assert prior_path().is_file() and prior_path().stat().st_size < 8e6
    info = prior_info()
    assert {"bccd", "aquarium", "license_plates"} <= set(info["trained_on"].replace("+", " ").split())
    assert info["model_config"]["sam"] == "off" and -0.1 <= info["min_gain"] <= 0.2


def test_the_prior_refines_the_bundled_sample_better_than_the_input():
    records, prior = load_sample(verbose=False).records, load_prior()
    for noise, gain in ((NoiseConfig(r=0.2, seed=3), 0.03), (NoiseConfig(r=0.2, seed=3, errors="larger"), 0.005)):
        noisy = [noise.noisy(r) for r in records]
        refined = [prior.refine(r.path, n)[0] for r, n in zip(records, noisy)]
        before, after = (
            torch.cat([elementwise_iou(b, r.boxes) for b, r in zip(boxes, records)]) for boxes in (noisy, refined)
        )
        assert after.mean() > before.mean() + gain, (noise.errors, before.mean(), after.mean())
    clean = [prior.refine(r.path, r.boxes)[0] for r in records]  # do no harm: clean boxes stay near where they are
    iou = torch.cat([elementwise_iou(c, r.boxes) for c, r in zip(clean, records)])
    assert iou.mean() > 0.95 and (iou < 0.95).float().mean() < 0.05


def test_the_prior_gates_a_set_that_looks_noisy_more_freely_than_a_clean_one():
    "All the boxes of one call are one set: the margin follows how clean the judge finds them, one margin per set."
    records, prior = load_sample(verbose=False).records, load_prior()
    clean = refine_records(prior, records, [r.boxes for r in records], progress=False)
    noisy = refine_records(prior, records, [NoiseConfig(r=0.3, seed=1).noisy(r) for r in records], progress=False)
    assert gated_at(noisy, prior) < gated_at(clean, prior), (gated_at(noisy, prior), gated_at(clean, prior))
    assert {o.min_gain for o in noisy} == {gated_at(noisy, prior)}
    moved = [torch.cat([o.moved for o in out]).float().mean() for out in (clean, noisy)]
    assert moved[1] > moved[0], moved
