"""Training: events, stop, non-finite guard, best weights, resume, reproducibility, and the outcome."""

import math

import numpy as np
import pytest
import torch

from napari_cosdd.engine.config import TrainConfig
from napari_cosdd.engine.inference import denoise
from napari_cosdd.synthetic import excess_row_autocorrelation, make_dataset, psnr
from napari_cosdd.engine.train import LOSS_NAMES, Trainer, TrainingError, WeightAverage, anneal_factor


def _trainer(data, **cfg):
    base = dict(max_steps=6, val_every=3, crop_size=32, seed=0, device="cpu", val_crops=4)
    base.update(cfg)
    return Trainer(data, "SYX", preset="tiny", orientation="x", train_config=TrainConfig(**base))


def test_events_carry_progress_and_every_loss(stripes_small):
    events = list(_trainer(stripes_small[0]).fit())
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert kinds.count("validation") == 2
    val = next(e for e in events if e.kind == "validation")
    levels = [f"kl_{i}" for i in range(3)]  # the tiny preset's 3 levels, finest first
    assert set(val.train) == set(LOSS_NAMES) | set(levels) and set(val.val) == set(LOSS_NAMES) | set(levels)
    assert all(math.isfinite(v) for v in val.val.values())
    assert sum(val.val[k] for k in levels) == pytest.approx(val.val["kl"], rel=1e-5)
    steps = [e for e in events if e.kind in ("step", "validation")]
    assert [e.step for e in steps] == list(range(1, 7))
    assert steps[-1].eta == pytest.approx(0.0, abs=1e-6) and steps[0].eta > 0
    # The rates hold at first, then fall over the budget's last anneal_share to anneal_to of it.
    cfg = TrainConfig()
    assert steps[0].lr == pytest.approx(cfg.learning_rate)
    assert steps[-1].epoch > 0 and steps[-1].lr == pytest.approx(cfg.learning_rate * cfg.anneal_to)


def test_stop_request_ends_at_the_next_step_and_leaves_a_usable_model(stripes_small):
    trainer = _trainer(stripes_small[0], max_steps=1000)
    seen = []
    for ev in trainer.fit():
        seen.append(ev)
        if ev.step == 2:
            trainer.stop()
    assert seen[-1].kind == "done" and "stopped" in seen[-1].message
    assert max(e.step for e in seen) == 2
    out = denoise(trainer.model, stripes_small[0][:1], "SYX", device="cpu")
    assert np.isfinite(out.direct).all()


def test_closing_the_generator_restores_best_weights(stripes_small):
    trainer = _trainer(stripes_small[0], max_steps=1000, val_every=2, direct_average=0.0)
    gen = trainer.fit()
    for ev in gen:
        if ev.kind == "validation":
            best = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        if ev.step == 3:
            break
    gen.close()  # what napari's worker.quit() does
    now = trainer.model.state_dict()
    assert all(torch.equal(now[k], best[k]) for k in best), "weights of the best validation restored"
    assert trainer.history[-1]["steps"] == 3


def test_best_validation_weights_are_kept(stripes_small, monkeypatch):
    trainer = _trainer(stripes_small[0], max_steps=9, val_every=3, direct_average=0.0)
    scores = iter([1.0, 0.5, 2.0, 3.0])  # the second validation is the best one
    snapshots = []
    real = trainer.validate

    def fake_validate():
        out = real()
        out["elbo"] = next(scores)
        snapshots.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
        return out

    monkeypatch.setattr(trainer, "validate", fake_validate)
    list(trainer.fit())
    final = trainer.model.state_dict()
    assert all(torch.equal(final[k], snapshots[1][k]) for k in final)
    assert trainer.history[-1]["best_val_elbo"] == 0.5


def test_non_finite_losses_are_skipped_then_end_training_with_advice(stripes_small, monkeypatch):
    trainer = _trainer(stripes_small[0], max_steps=50, max_nonfinite=3)
    real = trainer.model.losses
    calls = {"n": 0}

    def poisoned(x, direct=True):
        calls["n"] += 1
        out = real(x, direct)
        if calls["n"] in (2,) or calls["n"] >= 5:
            out["elbo"] = out["elbo"] * float("nan")
        return out

    monkeypatch.setattr(trainer.model, "losses", poisoned)
    warnings = []
    with pytest.raises(TrainingError, match="fewer mixture components.*clipping outliers.*learning rate"):
        for ev in trainer.fit():
            if ev.kind == "warning":
                warnings.append(ev)
    assert len(warnings) >= 2 and warnings[0].skipped_steps == 1
    for p in trainer.model.parameters():
        assert torch.isfinite(p).all(), "a skipped step must not touch the weights"


def test_time_budget_ends_training(stripes_small):
    trainer = _trainer(stripes_small[0], max_steps=None, max_minutes=0.02)
    events = list(trainer.fit())
    assert events[-1].kind == "done" and events[-1].elapsed < 10


def test_resume_continues_from_the_model(stripes_small, tiny_model):
    steps_before = sum(h["steps"] for h in tiny_model.history)
    trainer = Trainer(stripes_small[0], "SYX", model=tiny_model,
                      train_config=TrainConfig(max_steps=3, val_every=3, crop_size=32, device="cpu"))
    list(trainer.fit())
    assert trainer.steps_done == steps_before + 3
    assert len(trainer.model.history) == len(tiny_model.history)


def test_resume_continues_the_optimisers_from_the_model_file(stripes_small, tmp_path):
    from napari_cosdd.engine.model_file import load_model, save_model

    first = _trainer(stripes_small[0], max_steps=12, val_every=4)
    list(first.fit())
    loaded = load_model(save_model(first.model, tmp_path / "m.cosdd"))  # weights-only loading
    state = loaded.training_state
    assert state["optimizer"] == "adamax" and state["steps"] == 12 and state["best_val_elbo"] is not None
    assert {int(v["step"]) for v in state["optimisers"]["elbo"]["state"].values()} == {12}
    resumed = Trainer(stripes_small[0], "SYX", model=loaded, train_config=TrainConfig(
        max_steps=6, val_every=3, crop_size=32, seed=0, device="cpu", val_crops=4))
    events = list(resumed.fit())
    assert "continued from step 12" in events[0].message
    after = resumed.model.training_state["optimisers"]["elbo"]["state"]
    assert {int(v["step"]) for v in after.values()} == {18}, "the optimisers' steps went on from 12"
    assert load_model(save_model(resumed.model, tmp_path / "small.cosdd", training_state=False)).training_state is None


def test_resuming_never_ends_worse_than_it_started(stripes_small, monkeypatch):
    """A resumed run whose every step makes things worse (here each optimiser step adds noise to the
    weights) keeps the weights it started from: they are the best until this run's validations beat them."""
    first = _trainer(stripes_small[0], max_steps=12, val_every=4)
    list(first.fit())
    started = first.validate()["elbo"]
    before = {k: v.clone() for k, v in first.model.state_dict().items()}

    @torch.no_grad()
    def wrecking_step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(0.05 * torch.randn_like(p))

    monkeypatch.setattr(torch.optim.Adamax, "step", wrecking_step)
    resumed = Trainer(stripes_small[0], "SYX", model=first.model, train_config=TrainConfig(
        max_steps=6, val_every=3, crop_size=32, seed=0, device="cpu", val_crops=4))
    events = list(resumed.fit())
    vals = [e.val["elbo"] for e in events if e.kind == "validation"]
    assert len(vals) == 2 and min(vals) > started, "the wrecking run made every validation worse"
    assert resumed.validate()["elbo"] == pytest.approx(started, rel=1e-6)
    assert all(torch.equal(before[k], v) for k, v in resumed.model.state_dict().items())


def test_channels_last_and_cpu_bf16_train_the_same_model(stripes_small):
    """Channels-last is a memory layout: the same arithmetic up to rounding, and the model comes back in
    the ordinary layout. bf16 on a CPU with bf16 instructions stays close to fp32; on one without, the
    run says it stays in fp32."""
    from napari_cosdd.engine.device import cpu_has_bf16

    assert TrainConfig().cpu_bf16  # on by default: it only acts where the CPU has the instructions
    plain = _trainer(stripes_small[0], channels_last=False, cpu_bf16=False)
    list(plain.fit())
    reference = plain.validate()["elbo"]
    laid_out = _trainer(stripes_small[0], channels_last=True, cpu_bf16=False)
    list(laid_out.fit())
    assert laid_out.validate()["elbo"] == pytest.approx(reference, abs=1e-3)
    assert all(p.is_contiguous() for p in laid_out.model.parameters())
    half = _trainer(stripes_small[0], cpu_bf16=True)
    events = list(half.fit())
    if cpu_has_bf16():
        assert half.validate()["elbo"] == pytest.approx(reference, abs=0.02)
    else:
        assert "fp32 training: this CPU has no bf16 instructions" in events[0].message


def test_training_leaves_the_threads_denormal_setting_as_it_found_it(stripes_small):
    """Flushing denormals speeds training up but is a per-thread process setting: fit() puts it back."""
    from napari_cosdd.engine.device import denormals_flushed

    for setting in (False, True):
        torch.set_flush_denormal(setting)
        try:
            list(_trainer(stripes_small[0], max_steps=2, val_every=2).fit())
            assert denormals_flushed() == setting
        finally:
            torch.set_flush_denormal(False)


def test_resume_refuses_other_channel_counts(tiny_model):
    rgbish = np.random.default_rng(0).normal(size=(2, 64, 64)).astype(np.float32)
    with pytest.raises(ValueError, match="channel"):
        Trainer(rgbish, "CYX", model=tiny_model, train_config=TrainConfig(max_steps=1))


def test_seed_makes_cpu_training_reproducible(stripes_small):
    a = _trainer(stripes_small[0])
    b = _trainer(stripes_small[0])
    list(a.fit())
    list(b.fit())
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_outcome_cpu_model_denoises_stripes(stripes_cpu_model):
    """Training the CPU preset for a short budget (300 steps) must clearly denoise row-correlated noise.

    Measured (2-core CPU, about 80 s): PSNR +4.1 dB over the noisy input with the first CPU preset and
    Adamax, +6.4 dB with the 4-level preset and Adam, +7.5 dB with the method's networks and Adamax. The
    margin asserted, +3 dB, fails for any model that does not denoise (the identity scores +0 dB, a
    model whose latents collapsed scores about +0 to +1.5 dB). The "tiny" preset is too small to escape
    posterior collapse in this budget, so the outcome is checked on the real CPU default instead
    (conftest). The row correlation left in the error must fall at every lag and by more than half on
    average over lags 1-3 (measured: 0.48/0.45/0.37 -> 0.05/0.14/0.20 after 300 steps).
    """
    test_noisy, test_clean = make_dataset("stripes", n_images=2, shape=(128, 128), seed=99)
    out = denoise(stripes_cpu_model, test_noisy, "SYX", method="direct", device="cpu").direct
    gain = np.mean([psnr(c, o) - psnr(c, n) for c, o, n in zip(test_clean, out, test_noisy)])
    before = excess_row_autocorrelation(test_noisy - test_clean)
    after = excess_row_autocorrelation(out - test_clean)
    print(f"gain {gain:+.2f} dB; excess row autocorrelation {before} -> {after}")
    assert gain > 3.0, f"direct output only {gain:+.2f} dB over the noisy input"
    assert np.all(after < before) and after.mean() <= before.mean() / 2, \
        f"row correlation not halved: {before} -> {after}"


def _three_optimisers():
    """One-parameter stand-ins for the ELBO's, the signal decoder's and the Direct Denoiser's optimisers
    at lr 2e-3, and a plateau rule on the first that cuts by 10x at every validation without progress."""
    params = {k: [torch.nn.Parameter(torch.zeros(1))] for k in ("elbo", "signal", "direct")}
    optimisers = {k: torch.optim.Adam(p, lr=2e-3) for k, p in params.items()}
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimisers["elbo"], factor=0.1, patience=0)
    return optimisers, scheduler


def test_one_plateau_schedule_sets_every_learning_rate():
    """The ELBO's plateau rule lowers the signal decoder's rate (and, without a floor, the Direct
    Denoiser's) with its own: their validation losses are measured against random posterior samples and
    are too noisy to schedule on."""
    optimisers, scheduler = _three_optimisers()
    Trainer._follow_schedule(scheduler, optimisers, 1.0)
    assert all(o.param_groups[0]["lr"] == pytest.approx(2e-3) for o in optimisers.values())
    Trainer._follow_schedule(scheduler, optimisers, 1.0)  # no improvement: the rate drops, for all
    assert all(o.param_groups[0]["lr"] == pytest.approx(2e-4) for o in optimisers.values())


@pytest.mark.parametrize("patience", [0, 1])
def test_the_plateau_rule_is_off_by_default_and_drops_the_rates_when_given_a_patience(stripes_small, patience):
    """Validations that never improve: by default (lr_patience 0) the rates hold until the final fall,
    which 10-minute runs on the real-data matrix scored better than a tenfold drop on a plateau; with a
    patience of 1 they drop tenfold after the second validation without improvement."""
    assert TrainConfig().lr_patience == 0
    trainer = _trainer(stripes_small[0], max_steps=6, val_every=1, anneal_share=0.0, lr_patience=patience,
                       collapse_kl=0.0, early_stopping_patience=100)
    real = trainer.validate
    trainer.validate = lambda: {**real(), "elbo": 1.0}
    rates = [e.lr for e in trainer.fit() if e.kind == "validation"]
    lr = TrainConfig().learning_rate
    assert len(rates) == 6
    if patience == 0:
        assert rates == pytest.approx([lr] * 6)
    else:
        assert rates[:2] == pytest.approx([lr] * 2) and rates[-1] < 0.2 * lr
    with pytest.raises(ValueError, match="lr_patience"):
        TrainConfig(lr_patience=-1)


def test_the_direct_denoisers_rate_keeps_its_floor():
    """The Direct Denoiser's rate follows the ELBO's down to its floor and stays there while the VAE's
    falls further; its target, the posterior, is still moving then. By default the floor is the initial
    rate, so the Direct Denoiser keeps it (its weight average smooths the steps instead)."""
    for share in (0.1, TrainConfig().direct_lr_floor):
        optimisers, scheduler = _three_optimisers()
        for _ in range(4):  # 2e-3, then 2e-4, 2e-5, 2e-6 for the ELBO
            Trainer._follow_schedule(scheduler, optimisers, 1.0, 2e-3 * share)
        lrs = {k: o.param_groups[0]["lr"] for k, o in optimisers.items()}
        assert lrs["elbo"] == pytest.approx(2e-6) and lrs["signal"] == pytest.approx(2e-6)
        assert lrs["direct"] == pytest.approx(2e-3 * share)
    assert TrainConfig().direct_lr_floor == 1.0
    with pytest.raises(ValueError, match="direct_lr_floor"):
        TrainConfig(direct_lr_floor=1.5)


def test_the_optimiser_setting_is_used(stripes_small):
    """Adamax (the reference's) is the default: on the real-data matrix Adam let the latents of smooth
    images die (docs/benchmarks.md). "adam" trains the same networks along another path."""
    assert TrainConfig().optimizer == "adamax"
    runs = {}
    for name in ("adam", "adamax"):
        trainer = _trainer(stripes_small[0], max_steps=3, val_every=100, optimizer=name)
        list(trainer.fit())
        runs[name] = trainer.model.state_dict()
    weights = [k for k in runs["adam"] if k.endswith("weight")]
    assert any(not torch.equal(runs["adam"][k], runs["adamax"][k]) for k in weights)


def test_an_unknown_optimiser_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="adam"):
        TrainConfig(optimizer="sgd")


def test_the_collapse_guard_starts_afresh_then_stops_with_advice(stripes_small, collapsed_latents):
    """Latents that stay dead: after three validations under the threshold the guard starts again from
    fresh weights with another seed, and says so; when they die again it stops training with a message
    that says what to try, and the model is marked as not usable."""
    trainer = _trainer(stripes_small[0], max_steps=100, val_every=5)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    events = []
    with pytest.raises(TrainingError, match="latents collapsed") as err:
        for ev in trainer.fit():
            events.append(ev)
            if ev.kind == "warning":
                after = trainer.model.state_dict()
                assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))
                assert torch.equal(before["data_mean"], after["data_mean"])  # the normalisation stays
    warnings = [e for e in events if e.kind == "warning"]
    assert len(warnings) == 1 and "starting again from fresh weights" in warnings[0].message
    assert warnings[0].step == 15  # three validations in a row under the threshold
    assert "orientation" in str(err.value) and "1 fresh start" in str(err.value)
    assert trainer.collapsed and trainer.history[-1]["reason"] == "stopped: the latents collapsed"
    assert trainer.history[-1]["steps"] == 30


def test_latents_dying_on_pure_noise_are_caught_and_training_stops():
    """A setting known to collapse, for real: white noise holds no signal, so the latents have nothing
    to carry and their KL falls towards zero; Adam at a high rate gets there in tens of steps. With the
    threshold raised to fit so short a run, the guard starts afresh once, sees the latents die again and
    stops with its advice."""
    noise = np.random.default_rng(0).normal(100, 10, size=(8, 96, 96)).astype(np.float32)
    trainer = Trainer(noise, "SYX", preset="tiny", orientation="none", train_config=TrainConfig(
        max_steps=400, val_every=5, crop_size=32, seed=0, device="cpu", val_crops=4, optimizer="adam",
        learning_rate=1e-2, collapse_kl=0.01))
    events = []
    with pytest.raises(TrainingError, match="latents collapsed"):
        for ev in trainer.fit():
            events.append(ev)
    kls = [e.val["kl"] for e in events if e.kind == "validation"]
    assert kls[0] > 0.1 and min(kls) < 0.01  # alive at first, then dead
    assert len([e for e in events if e.kind == "warning"]) == 1 and trainer.collapsed
    assert trainer.history[-1]["steps"] < 400


def test_the_collapse_guard_can_be_turned_off(stripes_small, collapsed_latents):
    trainer = _trainer(stripes_small[0], max_steps=20, val_every=5, collapse_kl=0)
    events = list(trainer.fit())
    assert events[-1].kind == "done" and not [e for e in events if e.kind == "warning"]


def test_training_with_clipped_outliers_on_uint16_counts(stripes_small):
    """Percentile clipping of a uint16 stack used to promote the images to float64 and crash the first
    step; the normalisation must describe the clipped data."""
    counts = np.clip(100 + 400 * stripes_small[0], 0, 65535).astype(np.uint16)
    counts[0, 5, 5] = 65000  # a hot pixel
    trainer = _trainer(counts, max_steps=3, clip_outliers=(0.1, 99.9))
    events = list(trainer.fit())
    assert events[-1].kind == "done" and trainer.history[-1]["steps"] == 3
    assert "clipped to [" in events[0].message
    hi = float(np.percentile(counts.astype(np.float32), 99.9))
    assert float(trainer.model.data_mean[0]) < hi
    assert all(img.dtype == np.float32 and img.max() <= (hi - float(trainer.model.data_mean[0]))
               / float(trainer.model.data_std[0]) + 1e-4 for img in trainer.train_images)


def test_latents_in_use_do_not_trip_the_guard(stripes_small):
    events = list(_trainer(stripes_small[0], max_steps=30, val_every=5).fit())
    kls = [e.val["kl"] for e in events if e.kind == "validation"]
    assert min(kls) > TrainConfig().collapse_kl
    assert not [e for e in events if e.kind == "warning"] and events[-1].kind == "done"


def test_weight_average_follows_early_steps_then_averages_slowly():
    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    average = WeightAverage(net, decay=0.99)
    with torch.no_grad():
        net.weight.fill_(1.0)
    average.update()  # first update: decay 2/11, so the average moves most of the way
    assert average.state["weight"].item() == pytest.approx(9 / 11)
    for _ in range(2000):
        average.update()
    assert average.state["weight"].item() == pytest.approx(1.0)
    with torch.no_grad():
        net.weight.fill_(2.0)
    average.update()  # late: decay 0.99
    assert average.state["weight"].item() == pytest.approx(1.01, abs=1e-6)


def test_only_the_direct_denoiser_keeps_averaged_weights(stripes_small):
    """Same seed, with and without the average: the VAE, AR and signal decoders end identical, the
    Direct Denoiser does not (it keeps its averaged weights)."""
    states = {}
    for decay in (0.0, 0.99):
        trainer = _trainer(stripes_small[0], max_steps=6, val_every=6, direct_average=decay)
        list(trainer.fit())
        states[decay] = trainer.model.state_dict()
    plain, averaged = states[0.0], states[0.99]
    others = [k for k in plain if not k.startswith("direct_denoiser.")]
    assert others and all(torch.equal(plain[k], averaged[k]) for k in others)
    assert any(not torch.equal(plain[k], averaged[k]) for k in plain if k.startswith("direct_denoiser."))


def test_direct_every_trains_the_direct_denoiser_on_every_kth_step_only(stripes_small):
    """direct_every=3: the Direct Denoiser's weights move on steps 1 and 4 of 6, the VAE's on all."""
    trainer = _trainer(stripes_small[0], max_steps=6, val_every=6, direct_average=0.0, direct_every=3)

    def weights():
        return ([p.detach().clone() for p in trainer.model.direct_denoiser.parameters()],
                [p.detach().clone() for p in trainer.model.vae.parameters()])

    def changed(a, b):
        return any(not torch.equal(x, y) for x, y in zip(a, b))

    before = weights()
    moved = []
    for event in trainer.fit():
        if event.kind in ("step", "validation"):
            now = weights()
            moved.append((event.step, changed(before[0], now[0]), changed(before[1], now[1])))
            before = now
    assert [step for step, _, _ in moved] == list(range(1, 7))
    assert [step for step, direct, _ in moved if direct] == [1, 4]
    assert all(vae for _, _, vae in moved)
    with pytest.raises(ValueError, match="direct_every"):
        TrainConfig(direct_every=0)


def test_anneal_factor_holds_then_falls_linearly_to_its_end():
    assert anneal_factor(0.5, 0.3, 0.05) == 1.0 and anneal_factor(0.7, 0.3, 0.05) == 1.0
    assert anneal_factor(0.85, 0.3, 0.05) == pytest.approx(1 - 0.95 * 0.5)
    assert anneal_factor(1.0, 0.3, 0.05) == pytest.approx(0.05)
    assert anneal_factor(1.0, 0.0, 0.05) == 1.0  # share 0: no fall
    with pytest.raises(ValueError, match="anneal_share"):
        TrainConfig(anneal_share=1.5)
    with pytest.raises(ValueError, match="anneal_parts"):
        TrainConfig(anneal_parts="vae")


def test_anneal_factor_can_start_its_fall_early():
    assert anneal_factor(0.2, 0.3, 0.05, start=0.2) == 1.0
    assert anneal_factor(0.35, 0.3, 0.05, start=0.2) == pytest.approx(1 - 0.95 * 0.5)
    assert anneal_factor(0.5, 0.3, 0.05, start=0.2) == pytest.approx(0.05)
    assert anneal_factor(0.9, 0.3, 0.05, start=0.2) == pytest.approx(0.05)


def _flat_validation(trainer):
    """Every validation gives the same ELBO, so none after the first counts as an improvement."""
    validate = trainer._agreed_validation

    def flat(average=None):
        return dict(validate(average), elbo=1.0)

    trainer._agreed_validation = flat


def test_early_stopping_before_the_fall_starts_the_fall_and_ends_after_it(stripes_small):
    """A plateau at step 6 of 40 (patience 2, a validation every 2 steps) with a fall over the last 25 %:
    the rates fall from step 7 over 10 steps to a tenth, the user is told, and the run ends at step 16,
    not at 6 and not at the budget's 40."""
    lr = TrainConfig().learning_rate
    trainer = _trainer(stripes_small[0], max_steps=40, val_every=2, early_stopping_patience=2,
                       anneal_share=0.25, anneal_to=0.1, collapse_kl=0.0)
    _flat_validation(trainer)
    used = []
    step = trainer._training_step

    def recording_step(run):
        ok = step(run)
        used.append(run.optimisers["elbo"].param_groups[0]["lr"])
        return ok

    trainer._training_step = recording_step
    events = list(trainer.fit())
    warnings = [e.message for e in events if e.kind == "warning"]
    assert len(warnings) == 1 and "fall now" in warnings[0] and "step 6" in warnings[0]
    assert trainer.steps_done == 16
    assert used[:6] == pytest.approx([lr] * 6)
    assert used[6:] == pytest.approx([lr * anneal_factor((k + 1) / 40, 0.25, 0.1, 6 / 40) for k in range(6, 16)])
    assert used[-1] == pytest.approx(0.1 * lr)
    assert "rates fell early" in events[-1].message
    assert trainer.model.history[-1]["reason"] == events[-1].message


def test_early_stopping_waits_for_a_fall_under_way_and_ends_a_run_without_one(stripes_small):
    # no fall: the plateau at step 6 ends the run; a fall from step 4 on: it runs to the budget's end
    for share, steps, reason in ((0.0, 6, "early stopping: validation ELBO stopped improving"),
                                 (0.9, 40, "budget reached")):
        trainer = _trainer(stripes_small[0], max_steps=40, val_every=2, early_stopping_patience=2,
                           anneal_share=share, collapse_kl=0.0)
        _flat_validation(trainer)
        events = list(trainer.fit())
        assert trainer.steps_done == steps
        assert events[-1].message == reason
        assert not [e for e in events if e.kind == "warning"]


@pytest.mark.parametrize("parts", ["all", "direct"])
def test_the_rates_fall_over_the_budgets_last_share_and_a_continued_run_starts_unfallen(stripes_small, parts):
    """10 steps, the last half falling to a tenth: the rate the steps used is the schedule's for steps 1-5,
    then falls to a tenth at step 10, for every network (parts 'all') or the Direct Denoiser's only. The
    saved optimiser state holds the schedule's rate, so a continued run does not start at the tenth."""
    lr = TrainConfig().learning_rate
    trainer = _trainer(stripes_small[0], max_steps=10, val_every=100, anneal_share=0.5, anneal_to=0.1,
                       anneal_parts=parts)
    used = {"elbo": [], "direct": []}
    step = trainer._training_step

    def recording_step(run):
        ok = step(run)
        for name in used:
            used[name].append(run.optimisers[name].param_groups[0]["lr"])
        return ok

    trainer._training_step = recording_step
    list(trainer.fit())
    expected = [lr * anneal_factor(k / 10, 0.5, 0.1) for k in range(1, 11)]
    assert used["direct"] == pytest.approx(expected) and used["direct"][-1] == pytest.approx(0.1 * lr)
    assert used["elbo"] == pytest.approx(expected if parts == "all" else [lr] * 10)
    saved = trainer.model.training_state["optimisers"]
    assert all(group["lr"] == pytest.approx(lr) for o in saved.values() for group in o["param_groups"])
