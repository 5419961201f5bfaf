"""Transformer distillation: everything that needs Hugging Face ``transformers``.

- :mod:`.transformer`: offline HF encoders (:func:`load_encoder`), students cut from a teacher
  (:func:`make_student`), :class:`TextClassifier`, mean pooling and :func:`encode_texts`
- :mod:`.transformer_losses`: TinyBERT's per-layer losses (hidden states, attention scores, heads aligned)
- :mod:`.tinybert`: TinyBERT's objective (Jiao et al. 2020) over ``FeatureTap`` hooks, one ``train()`` per stage
- :mod:`.text_task`: teacher head, label-only baseline, :func:`distill_encoder` (general + task distillation)
- :mod:`.text_io`: students saved as ``save_pretrained`` folders with their heads

``transformers`` itself is imported only where a model is loaded or built, so importing this package
does not need it.
"""

from modelpress.text.text_io import LoadedStudent, load_student, save_student
from modelpress.text.text_task import (
    TinyBERTResult,
    compare_text_models,
    distill_encoder,
)
from modelpress.text.tinybert import TinyBERTConfig
from modelpress.text.transformer import (
    Encoder,
    TextClassifier,
    encode_texts,
    load_encoder,
    make_student,
)

__all__ = [
    "Encoder", "LoadedStudent", "TextClassifier", "TinyBERTConfig", "TinyBERTResult", "compare_text_models",
    "distill_encoder", "encode_texts", "load_encoder", "load_student", "make_student", "save_student",
]
