"""Two CPU processes (gloo): losses with cross-rank negatives equal the single-process losses on the
concatenated batch, and so do the gradients once DDP averages them; cross-rank statistics (DINO centre,
Sinkhorn-Knopp) equal those of the concatenated batch even with unequal per-rank batches."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from open_tips.losses import DINOLoss, clip_loss, siglip_loss, sinkhorn_knopp

WORLD = 2
LOCAL = 4


def _mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / WORLD


def _run(fn, image, text, rank):
    """Local shard through ``fn``; backward of loss / world mimics DDP's gradient averaging."""
    img = image[rank * LOCAL : (rank + 1) * LOCAL].clone().requires_grad_(True)
    txt = text[rank * LOCAL : (rank + 1) * LOCAL].clone().requires_grad_(True)
    temperature = torch.tensor([0.1], requires_grad=True)
    loss = fn(img, txt, temperature)
    (loss / WORLD).backward()
    return (
        loss.detach(),
        _mean_over_ranks(loss),
        img.grad.clone(),
        txt.grad.clone(),
        WORLD * _mean_over_ranks(temperature.grad),
    )  # replicated parameter: DDP all-reduces its grad


def _worker(
    rank: int, init_file: str, image: torch.Tensor, text: torch.Tensor, logits: torch.Tensor, out: dict
) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        results = {
            "clip_local": _run(
                lambda i, t, temp: clip_loss(i, t, temp, gather=True, local_loss=True), image, text, rank
            ),
            "clip_full": _run(
                lambda i, t, temp: clip_loss(i, t, temp, gather=True, local_loss=False), image, text, rank
            ),
            "clip_no_gather": _run(lambda i, t, temp: clip_loss(i, t, temp, gather=False), image, text, rank),
            "siglip": _run(lambda i, t, temp: siglip_loss(i, t, temp, -2.0), image, text, rank),
        }
        # Unequal shards (3 and 5 rows) for the cross-rank statistics.
        rows = logits[:3] if rank == 0 else logits[3:]
        loss_fn = DINOLoss(out_dim=logits.shape[1], center_momentum=0.5)
        loss_fn.update_center(rows)
        results["center"] = loss_fn.center.clone()
        results["sinkhorn"] = sinkhorn_knopp(rows, 0.05, n_iterations=3)
        out[rank] = results
    finally:
        dist.destroy_process_group()


def _single(fn, image, text):
    img, txt = image.clone().requires_grad_(True), text.clone().requires_grad_(True)
    temperature = torch.tensor([0.1], requires_grad=True)
    loss = fn(img, txt, temperature)
    loss.backward()
    return loss.detach(), img.grad, txt.grad, temperature.grad


def test_two_ranks_match_the_concatenated_batch(tmp_path):
    torch.manual_seed(0)
    image, text = torch.randn(WORLD * LOCAL, 6), torch.randn(WORLD * LOCAL, 6)
    logits = torch.randn(8, 5).tanh()
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(str(tmp_path / "init"), image, text, logits, out), nprocs=WORLD, join=True)

    references = {
        "clip_local": _single(lambda i, t, temp: clip_loss(i, t, temp), image, text),
        "clip_full": _single(lambda i, t, temp: clip_loss(i, t, temp), image, text),
        "siglip": _single(lambda i, t, temp: siglip_loss(i, t, temp, -2.0), image, text),
    }
    for name, (loss, grad_img, grad_txt, grad_temp) in references.items():
        for rank in range(WORLD):
            local, mean, g_img, g_txt, g_temp = out[rank][name]
            rows = slice(rank * LOCAL, (rank + 1) * LOCAL)
            assert torch.allclose(mean, loss, atol=1e-5), name
            if name == "clip_full":
                assert torch.allclose(local, loss, atol=1e-5)  # every rank computes the whole loss
            # gather's backward sums all ranks' contributions into each shard
            assert torch.allclose(g_img, grad_img[rows], atol=1e-6), name
            assert torch.allclose(g_txt, grad_txt[rows], atol=1e-6), name
            assert torch.allclose(g_temp, grad_temp, atol=1e-5), name

    # without gathering, negatives are local only: a different (larger-batch-blind) loss
    for rank in range(WORLD):
        rows = slice(rank * LOCAL, (rank + 1) * LOCAL)
        local = out[rank]["clip_no_gather"][0]
        assert torch.allclose(local, clip_loss(image[rows], text[rows], 0.1), atol=1e-6)
    assert not torch.allclose(out[0]["clip_no_gather"][1], references["clip_local"][0], atol=1e-3)

    expected_center = 0.5 * logits.mean(0, keepdim=True)  # weighted by rows, not the mean of rank means
    expected_sinkhorn = sinkhorn_knopp(logits, 0.05, n_iterations=3)
    for rank in range(WORLD):
        assert torch.allclose(out[rank]["center"], expected_center, atol=1e-6)
    assert torch.allclose(torch.cat([out[0]["sinkhorn"], out[1]["sinkhorn"]]), expected_sinkhorn, atol=1e-6)
