"""Liger-Kernel's chunked fused-linear GRPO loss, as the benchmarks run it beside
``token_ppo_loss`` (``bench/token_loss.py --liger`` on the CPU, the GPU check's section 8).

Liger-Kernel is not a dependency: this imports ``liger_kernel`` when called.
"""

from __future__ import annotations


def liger_grpo_loss(kl_coef: float, clip_low: float, clip_high: float, compiled: bool = True):
    """``loss(hidden, weight, tokens, mask, seq_advantages, ref_logprobs, old_logprobs)``: the
    scalar loss of ``LigerFusedLinearGRPOLoss`` with ``loss_type="bnpo"`` (token-mean over the
    mask), the k3 KL to the reference log-probs at ``kl_coef`` (Liger's beta) and the ratio
    clipped to [1 - clip_low, 1 + clip_high]; one advantage per sequence (``seq_advantages``,
    shape (sequences,)) and no entropy term, which Liger's loss lacks. ``compiled``: Liger's
    ``torch.compile`` of its chunk function. Raises ImportError where ``liger_kernel`` does not
    import."""
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

    liger = LigerFusedLinearGRPOLoss(beta=kl_coef, epsilon_low=clip_low, epsilon_high=clip_high,
                                     loss_type="bnpo", use_ref_model=True, compiled=compiled)

    def loss(hidden, weight, tokens, mask, seq_advantages, ref_logprobs, old_logprobs):
        out = liger(hidden, weight, tokens, mask.long(), seq_advantages,
                    ref_per_token_logps=ref_logprobs, old_per_token_logps=old_logprobs)
        return out[0] if isinstance(out, tuple) else out

    return loss
