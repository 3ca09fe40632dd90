"""Baseline: the same causal LM (same architecture, same input mode, same data) with a linear
regression head on the last prompt position's hidden state, trained with MSE on z-scored targets.
It is what decoding-based regression is usually compared with: a pointwise head, no sampling."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class RegressionHeadModel(nn.Module):
    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy  # rlreg.model.encoder.PolicyModel
        self.head = nn.Linear(policy.lm.config.hidden_size, 1)

    def forward(self, prompts: list[list[int]], pad_id: int, features: torch.Tensor | None) -> torch.Tensor:
        from rlreg.model.logprobs import pack_sequences

        empty = torch.zeros((len(prompts), 0), dtype=torch.long)
        ids, mask, _ = pack_sequences(prompts, empty, pad_id)
        extra = {} if features is None else {"features": features}
        # The body only: the LM head's logits over the whole vocabulary are not needed here.
        out = self.policy.final_hidden(input_ids=ids, attention_mask=mask, use_cache=False, **extra)
        last = mask.sum(-1) - 1
        hidden = out.last_hidden_state[torch.arange(len(prompts)), last]
        return self.head(hidden).squeeze(-1)


def _inputs(task, split: str, rows=None):
    inputs = task.inputs(split, rows)
    features = inputs.get("features")
    return inputs["prompts"], None if features is None else torch.as_tensor(features, dtype=torch.float32)


def train_regression_head(task, steps: int, batch_size: int, lr: float, eval_every: int, patience: int,
                          seed: int = 0) -> dict[str, np.ndarray]:
    """Train from the task's freshly built model; returns predictions (original units) for val and test
    from the step with the best validation RMSE."""
    from rlreg.model.policy import load_policy
    from rlreg.model.build import ModelMeta
    from rlreg.data.batches import BatchCursor

    torch.manual_seed(seed)
    meta = ModelMeta.load(task.model_dir)
    model = RegressionHeadModel(load_policy(str(task.model_dir), meta))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    z_train = torch.as_tensor(task.scaler.to_z(task.y["train"]), dtype=torch.float32)
    cursor = BatchCursor(len(task.y["train"]), batch_size, seed)

    def predict(split: str) -> np.ndarray:
        prompts, features = _inputs(task, split)
        model.eval()
        with torch.no_grad():
            z = model(prompts, meta.pad_id, features).numpy().astype(np.float64)
        model.train()
        return task.scaler.from_z(z)

    best, best_pred, stale = float("inf"), None, 0
    for step in range(steps):
        rows = cursor.next()
        prompts, features = _inputs(task, "train", rows)
        loss = nn.functional.mse_loss(model(prompts, meta.pad_id, features), z_train[rows])
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if (step + 1) % eval_every and step + 1 != steps:
            continue
        val = predict("val")
        rmse = float(np.sqrt(np.mean((val - task.y["val"]) ** 2)))
        if rmse < best:
            best, stale, best_pred = rmse, 0, {"val": val, "test": predict("test")}
        else:
            stale += 1
            if stale >= patience:
                break
    return best_pred
