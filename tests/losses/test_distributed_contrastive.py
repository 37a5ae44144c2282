"""Two CPU processes (gloo): the gathered local-loss InfoNCE equals the single-process loss on the whole
batch, and so do the gradients."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from open_tips.losses.contrastive import clip_loss


def _worker(rank: int, world: int, init_file: str, image: torch.Tensor, text: torch.Tensor, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        local = image.shape[0] // world
        img = image[rank * local:(rank + 1) * local].clone().requires_grad_(True)
        txt = text[rank * local:(rank + 1) * local].clone().requires_grad_(True)
        loss = clip_loss(img, txt, 0.1, gather=True, local_loss=True)
        # DDP averages gradients over ranks; mimic that on the local shard's gradients.
        (loss / world).backward()
        losses = [torch.zeros(()) for _ in range(world)]
        dist.all_gather(losses, loss.detach())
        out[rank] = (torch.stack(losses).mean().item(), img.grad.clone(), txt.grad.clone())
    finally:
        dist.destroy_process_group()


def test_gathered_local_loss_matches_single_process(tmp_path):
    torch.manual_seed(0)
    image, text = torch.randn(8, 6), torch.randn(8, 6)
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), image, text, out), nprocs=2, join=True)

    img = image.clone().requires_grad_(True)
    txt = text.clone().requires_grad_(True)
    reference = clip_loss(img, txt, 0.1)
    reference.backward()
    for rank in range(2):
        mean_loss, grad_img, grad_txt = out[rank]
        assert abs(mean_loss - reference.item()) < 1e-5
        # with the local-loss trick each rank's gradients w.r.t. its own rows equal the full-batch ones
        # only after summing the contributions of all ranks, which gather's backward does
        assert torch.allclose(grad_img, img.grad[rank * 4:(rank + 1) * 4], atol=1e-6)
        assert torch.allclose(grad_txt, txt.grad[rank * 4:(rank + 1) * 4], atol=1e-6)
