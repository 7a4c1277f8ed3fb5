"""Mean pooling for BERT-family classifiers.

all-MiniLM-L6-v2 was trained to give sentence embeddings by averaging its token vectors; the
stock ``BertForSequenceClassification`` head reads the [CLS] token through a pooler instead.
A checkpoint whose config says ``"sentistream_pooling": "mean"`` is a regular Hugging Face
checkpoint (same weights, ``classifier`` on top) whose logits are computed from the
attention-masked mean of the last hidden states; the export wraps it the same way, so the ONNX
graph and the parity check see the model as trained.
"""

from __future__ import annotations

import types

CONFIG_KEY = "sentistream_pooling"


def _mean_pooled_forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
    from transformers.modeling_outputs import SequenceClassifierOutput

    base = getattr(self, self.base_model_prefix)
    hidden = base(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-6)
    logits = self.classifier(self.dropout(pooled))
    return SequenceClassifierOutput(logits=logits)


def use_mean_pooling(model) -> None:
    """Switch a BertForSequenceClassification-like model to mean pooling (in place)."""
    if not hasattr(model, "classifier") or not hasattr(model, "dropout"):
        raise ValueError(f"{type(model).__name__} has no classifier/dropout to mean-pool into")
    model.forward = types.MethodType(_mean_pooled_forward, model)
    setattr(model.config, CONFIG_KEY, "mean")


def apply_from_config(model) -> None:
    if getattr(model.config, CONFIG_KEY, None) == "mean":
        use_mean_pooling(model)
