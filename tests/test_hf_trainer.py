"""`distill.hf.DistillationTrainer`: a few dozen steps of a real `transformers.Trainer` on tiny BERTs built from
configs (CPU, offline): it distils through our registered method, keeps the teacher frozen and out of the optimizer and
the checkpoints, gives the same update with gradient accumulation as without, evaluates and resumes exactly."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

from distill.errors import DistillError
from distill.losses import kd_loss
from distill.methods import build_method
from distill.teachers import LiveTeacher

pytest.importorskip("transformers")
from transformers import TrainingArguments  # noqa: E402

from distill.hf import DistillationTrainer  # noqa: E402
from hf_models import TokenDataset, collate, tiny_bert  # noqa: E402


def arguments(out, **overrides) -> TrainingArguments:  # noqa: ANN001
    base = dict(
        output_dir=str(out), per_device_train_batch_size=8, per_device_eval_batch_size=64, max_steps=4,
        learning_rate=0.05, optim="sgd", lr_scheduler_type="constant", warmup_steps=0, seed=0, use_cpu=True,
        report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
    )
    return TrainingArguments(**{**base, **overrides})


def trainer_for(out, kind: str = "sequence", *, student_seed: int = 0, method: str = "kd", options=None,  # noqa: ANN001
                **overrides) -> DistillationTrainer:
    return DistillationTrainer(
        model=tiny_bert(kind, hidden=32, layers=2, seed=student_seed),
        teacher_model=tiny_bert(kind, hidden=48, layers=3, seed=1),
        args=arguments(out, **overrides), train_dataset=TokenDataset(kind, 32), data_collator=collate,
        temperature=2.0, alpha=0.5, method=method, method_options=options,
    )


def student_kl(trainer: DistillationTrainer, batch: dict) -> float:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        s, t = trainer.model.eval()(**inputs).logits, trainer.teacher_model(**inputs).logits
    return float(kd_loss(s, t, temperature=2.0))


def test_trainer_distils_with_a_frozen_teacher_outside_optimizer(tmp_path) -> None:  # noqa: ANN001
    trainer = trainer_for(tmp_path, max_steps=32)
    trainer.method.alpha = 1.0  # soft term only: the student can only move towards the teacher
    teacher_before = copy.deepcopy(trainer.teacher_model.state_dict())
    batch = collate([TokenDataset("sequence", 32)[i] for i in range(32)])
    kl_before = student_kl(trainer, batch)
    trainer.train()
    kl_after = student_kl(trainer, batch)
    assert kl_after < 0.5 * kl_before, (kl_before, kl_after)
    teacher = trainer.teacher_model
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in trainer.model.parameters()}
    assert not optimised & {id(p) for p in teacher.parameters()}
    assert next(teacher.parameters()).device == next(trainer.model.parameters()).device


def test_compute_loss_is_the_registered_method(tmp_path) -> None:  # noqa: ANN001
    """Same value as `build_method('kd')` on the same batch: the Trainer has no loss of its own."""
    trainer = trainer_for(tmp_path, "token")
    batch = collate([TokenDataset("token", 8)[i] for i in range(8)])
    trainer.model.train()
    got = trainer.compute_loss(trainer.model, batch)
    method = build_method("kd", trainer.model, LiveTeacher(trainer.teacher_model, tune=False), temperature=2.0,
                          alpha=0.5)
    torch.testing.assert_close(got, method(batch)["loss"])


@pytest.mark.parametrize("kind", ["token", "sequence"])
def test_gradient_accumulation_gives_the_update_of_one_big_batch(tmp_path, kind: str) -> None:  # noqa: ANN001
    """Batch 8 in one step vs 4 + 4 accumulated: micro-batches hold different numbers of real tokens, so only a loss
    normalised by the Trainer's `num_items_in_batch` (not a mean of per-micro-batch means) gives the same weights."""
    one = trainer_for(tmp_path / "one", kind, per_device_train_batch_size=8, gradient_accumulation_steps=1)
    acc = trainer_for(tmp_path / "acc", kind, per_device_train_batch_size=4, gradient_accumulation_steps=2)
    one.train()
    acc.train()
    for (name, a), b in zip(one.model.named_parameters(), acc.model.parameters()):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5, msg=lambda m: f"{name}: {m}")
    moved = tiny_bert(kind, hidden=32, layers=2, seed=0)
    assert any(not torch.allclose(p, q) for p, q in zip(one.model.parameters(), moved.parameters()))


def test_checkpoints_hold_the_student_only_and_resume_exactly(tmp_path) -> None:  # noqa: ANN001
    """dkd (its warm-up follows global_step) for 8 steps with a checkpoint at 4; a fresh trainer resumed from it ends
    on the same weights. The checkpoint's weights are the student's, names and shapes, nothing of the teacher."""
    opts = {"warmup_steps": 6}
    full = trainer_for(tmp_path / "run", method="dkd", options=opts, max_steps=8, save_strategy="steps", save_steps=4)
    full.train()
    saved = load_file(str(tmp_path / "run" / "checkpoint-4" / "model.safetensors"))
    student = full.model.state_dict()
    assert {k: tuple(v.shape) for k, v in saved.items()} == {
        k: tuple(v.shape) for k, v in student.items() if k in saved
    }
    assert set(saved) <= set(student) and not any("teacher" in k for k in saved)
    resumed = trainer_for(tmp_path / "run", method="dkd", options=opts, student_seed=5, max_steps=8,
                          save_strategy="steps", save_steps=4)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-4"))
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5, msg=lambda m: f"{name}: {m}")


def test_evaluate_reports_the_distillation_loss_and_student_metrics(tmp_path) -> None:  # noqa: ANN001
    seen = {}

    def metrics(pred) -> dict:  # noqa: ANN001
        seen["shape"] = tuple(pred.predictions.shape)
        return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}

    trainer = trainer_for(tmp_path)
    trainer.compute_metrics = metrics
    data = TokenDataset("sequence", 16, seed=3)
    result = trainer.evaluate(data)
    batch = collate([data[i] for i in range(16)])
    method = build_method("kd", trainer.model, LiveTeacher(trainer.teacher_model, tune=False), temperature=2.0,
                          alpha=0.5).eval()
    with torch.no_grad():
        expected = float(method(batch)["loss"])
    assert result["eval_loss"] == pytest.approx(expected, rel=1e-5)
    assert seen["shape"] == (16, 3) and 0.0 <= result["eval_accuracy"] <= 1.0


def test_bad_inputs_are_one_line(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(DistillError, match="teacher_model"):
        DistillationTrainer(model=tiny_bert(), args=arguments(tmp_path), train_dataset=TokenDataset("sequence", 8))
    with pytest.raises(DistillError, match="kdd"):
        trainer_for(tmp_path, method="kdd")
    with pytest.raises(DistillError, match="one live teacher"):
        trainer_for(tmp_path, method="ensemble")
    with pytest.raises(DistillError, match="method_options"):
        trainer_for(tmp_path, options={"temprature": 3})
    trainer = trainer_for(tmp_path, method="fitnet")  # 32 -> 48 wide hidden states need a projector
    with pytest.raises(DistillError, match="besides the student"):
        trainer.train()
