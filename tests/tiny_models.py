"""Tiny randomly initialised checkpoints built from configs: no downloads, seconds to export."""

from __future__ import annotations

from pathlib import Path

LABELS = ["negative", "neutral", "positive"]
CORPUS = [
    "the acting is superb", "a dull lifeless film", "it is a movie", "not bad at all",
    "an instant classic funny and moving", "the script is a mess", "the soundtrack is fine",
] * 20


def _wordpiece_tokenizer(path: Path):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   model_max_length=128)
    fast.model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    fast.save_pretrained(path)
    return fast


def _bpe_tokenizer(path: Path):
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import PreTrainedTokenizerFast

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(CORPUS, vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                      ("<s>", tok.token_to_id("<s>")))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok._tokenizer, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>", cls_token="<s>",
                                   sep_token="</s>", model_max_length=128)
    fast.model_input_names = ["input_ids", "attention_mask"]
    fast.save_pretrained(path)
    return fast


def make_checkpoint(kind: str, path: Path, seed: int = 0) -> Path:
    """``kind``: bert, roberta or distilbert."""
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        DistilBertConfig,
        DistilBertForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    torch.manual_seed(seed)
    id2label = dict(enumerate(LABELS))
    label2id = {v: k for k, v in id2label.items()}
    common = dict(num_labels=len(LABELS), id2label=id2label, label2id=label2id)
    if kind == "roberta":
        tok = _bpe_tokenizer(path)
        cfg = RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=64, max_position_embeddings=132,
                            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                            eos_token_id=tok.eos_token_id, **common)
        model = RobertaForSequenceClassification(cfg)
    elif kind == "distilbert":
        tok = _wordpiece_tokenizer(path)
        tok.model_input_names = ["input_ids", "attention_mask"]
        tok.save_pretrained(path)
        cfg = DistilBertConfig(vocab_size=len(tok), dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                               max_position_embeddings=128, pad_token_id=tok.pad_token_id, **common)
        model = DistilBertForSequenceClassification(cfg)
    else:
        tok = _wordpiece_tokenizer(path)
        cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                         pad_token_id=tok.pad_token_id, **common)
        model = BertForSequenceClassification(cfg)
    model.save_pretrained(path)
    return path
