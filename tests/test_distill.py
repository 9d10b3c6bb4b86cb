"""Knowledge distillation from a frozen teacher run (distill.teacher): the mixed target's maths, and the
pruning recovery path end to end."""

import json

import torch
from conftest import SMALL, perturbed

from maskdit.cli.app import main
from maskdit.diffusion.objectives import FlowMatching, hold_given, patchify, token_mse, training_pair
from maskdit.model import DiT
from maskdit.training.distill import Distillation


def tiny(depth: int, seed: int) -> DiT:
    torch.manual_seed(seed)
    return perturbed(DiT(input_size=(8, 8), in_channels=1, hidden_size=32, depth=depth, num_heads=2, num_classes=3,
                         task_conditioning=True),
                     seed=seed)


def test_the_mixed_target_gives_the_gradient_of_the_data_loss_plus_the_teacher_loss():
    student, teacher = tiny(1, 0), tiny(2, 1)
    objective, w = FlowMatching(), 0.3
    x0, noise = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    t, y = torch.rand(4), torch.tensor([0, 1, 2, 3])  # 3 = the null label
    given = torch.zeros(4, 16, dtype=torch.bool)
    given[:, :5] = True
    mixed = Distillation(teacher, w).objective(objective, y, given)
    x_t, target, weight = training_pair(mixed, x0, noise, t, student.patch_size, given)
    loss = token_mse(patchify(student(x_t, t, y, given=given), student.patch_size), target, weight)
    grads = torch.autograd.grad(loss, list(student.parameters()))

    x_t2, data, _ = training_pair(objective, x0, noise, t, student.patch_size, given)
    assert torch.equal(x_t, x_t2)  # the student's input is the plain step's
    with torch.no_grad():  # the teacher sees the same input, labels and condition mask
        taught = patchify(teacher(hold_given(objective.noisy(x0, noise, t), x0, given, (2, 2)), t, y, given=given),
                          (2, 2))
    pred = patchify(student(x_t, t, y, given=given), student.patch_size)
    expected = (1 - w) * token_mse(pred, data, weight) + w * token_mse(pred, taught, weight)
    for g, e in zip(grads, torch.autograd.grad(expected, list(student.parameters()))):
        assert torch.allclose(g, e, atol=1e-6)
    assert all(p.grad is None for p in teacher.parameters())
    assert not torch.allclose(target, data)  # the teacher really moved the target


def test_a_student_equal_to_its_teacher_has_zero_loss_and_distillation_recovers_a_pruned_run(tmp_path, capsys):
    teacher = tmp_path / "teacher"
    assert main(["train", "--no-progress", *SMALL, "model.depth=2", "steps=60", "ckpt_every=60", "log_every=1",
                 "ema_decay=0", f"run_dir={teacher}"]) == 0  # EMA = trained weights: init_from copies both
    # the student starts as the teacher (same layout, same weights): with pure distillation the first
    # step's loss is exactly zero, while the data loss of the same step is not
    for weight, run in [(1.0, "same"), (0.5, "half")]:
        assert main(["train", "--no-progress", *SMALL, "model.depth=2", "steps=1", "log_every=1",
                     f"init_from={teacher}", f"distill.teacher={teacher}", f"distill.weight={weight}",
                     f"run_dir={tmp_path / run}"]) == 0
    first = {run: json.loads((tmp_path / run / "metrics.jsonl").read_text().splitlines()[0])["loss"]
             for run in ("same", "half")}
    assert first["same"] == 0.0 and first["half"] > 0.01
    # prune to one block, then recover with the teacher: the distilled student moves towards the teacher's
    # prediction more than the data-only finetune of the same steps does
    pruned = tmp_path / "pruned"
    assert main(["prune", str(teacher), "--keep-blocks", "1", "--method", "every-other", "--out", str(pruned)]) == 0
    for name, extra in [("data", []), ("kd", [f"distill.teacher={teacher}"])]:
        assert main(["train", "--no-progress", *SMALL, "steps=40", "ckpt_every=40", "lr=3e-3",
                     f"init_from={pruned}", f"run_dir={tmp_path / name}", *extra]) == 0
    from maskdit.runs import load_run

    models = {name: load_run(tmp_path / name, ema=False).model for name in ("teacher", "data", "kd")}
    torch.manual_seed(5)
    x, t, y = torch.randn(64, 1, 8, 8), torch.rand(64), torch.randint(0, 10, (64,))
    with torch.no_grad():
        ref = models["teacher"](x, t, y)
        gap = {name: (models[name](x, t, y) - ref).pow(2).mean().item() for name in ("data", "kd")}
    assert gap["kd"] < 0.2 * gap["data"], gap
    capsys.readouterr()
