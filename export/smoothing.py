"""SmoothQuant-style input smoothing, applied to the PyTorch model before an int8 export.

Dynamic int8 quantizes each activation tensor with one scale per batch. Transformer activations
have a few outlier channels that take the whole range, so the other channels get a handful of
levels and labels flip. Smoothing divides each input channel ``j`` of a linear layer by
``s_j = max|x_j|**alpha / max|W_:,j|**(1 - alpha)`` and multiplies the weight column by the same
``s_j``: the product is unchanged in exact arithmetic (fp32 parity is checked as for any
export), and the int8 ranges of activations and weights become comparable. The division is an
explicit fp32 ``Mul`` before each MatMul (post-LayerNorm BERTs feed the same LayerNorm output to
the residual path, so it cannot be folded into the LayerNorm).
"""

from __future__ import annotations


def _smoothed_linear_class():
    import torch

    class SmoothedLinear(torch.nn.Module):
        def __init__(self, linear: torch.nn.Linear, scale: torch.Tensor) -> None:
            super().__init__()
            self.register_buffer("inv_scale", (1.0 / scale).to(linear.weight.dtype))
            self.linear = torch.nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
            with torch.no_grad():
                self.linear.weight.copy_(linear.weight * scale[None, :])
                if linear.bias is not None:
                    self.linear.bias.copy_(linear.bias)

        def forward(self, x):
            return self.linear(x * self.inv_scale)

    return SmoothedLinear


def encoder_linears(model) -> dict[str, object]:
    """Every nn.Linear inside the encoder layers (not embeddings, pooler or classifier)."""
    import torch

    return {name: m for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and (".layer." in name or ".transformer.layer." in name)}


def smooth(model, tokenizer, texts: list[str], alpha: float = 0.5, max_length: int = 64) -> int:
    """Replace encoder linears by smoothed ones, calibrated on ``texts``. Returns how many."""
    import torch

    linears = encoder_linears(model)
    amax: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(_module, inputs, _output):
            x = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(0)
            amax[name] = torch.maximum(amax[name], x) if name in amax else x
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in linears.items()]
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(texts), 32):
            enc = tokenizer(texts[i : i + 32], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
            model(**enc)
    for h in handles:
        h.remove()
    smoothed_cls = _smoothed_linear_class()
    for name, linear in linears.items():
        w_max = linear.weight.detach().abs().amax(0).clamp(min=1e-5)
        scale = (amax[name].clamp(min=1e-5) ** alpha) / (w_max ** (1 - alpha))
        scale = scale.clamp(min=1e-2, max=1e2)
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, smoothed_cls(linear, scale))
    return len(linears)


def summary(alpha: float, n: int) -> dict:
    return {"method": "smoothquant", "alpha": alpha, "smoothed_linears": n, "note": "fp32 Mul before each MatMul"}

