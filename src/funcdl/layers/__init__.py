"""Flax NNX layers up to a Transformer encoder, at parity with ``torch.nn``.

Every module computes with ``funcdl.tape``'s differentiable functions, so one definition is
differentiated by ``jax.grad`` and by the tape. ``from_torch`` / ``to_torch`` convert live torch
modules (configuration and weights), ``load_torch_state_dict`` loads PyTorch weights into a module
built by hand; ``from_transformers`` / ``load_transformers`` / ``save_transformers`` do the same for
Hugging Face BERT-family models, ``load_safetensors`` / ``save_safetensors`` for files.
"""

from funcdl.layers.activations import (
    CELU,
    ELU,
    GLU,
    SELU,
    Hardsigmoid,
    Hardswish,
    Hardtanh,
    LogSigmoid,
    LogSoftmax,
    Mish,
    PReLU,
    ReLU6,
    Softmax,
    Softplus,
    Softsign,
    Tanhshrink,
)
from funcdl.layers.attention import (
    AttentionHead,
    MultiHeadAttention,
    causal_mask,
    scaled_dot_product_attention,
)
from funcdl.layers.basic import (
    MLP,
    Dropout,
    Embedding,
    LayerNorm,
    Linear,
    PositionalEmbedding,
    sinusoidal_table,
)
from funcdl.layers.batchnorm import BatchNorm1d, BatchNorm2d
from funcdl.layers.bert import Bert, BertConfig, BertOutput, TextEmbeddings
from funcdl.layers.conv import Conv1d, Conv2d, ConvTranspose1d, ConvTranspose2d
from funcdl.layers.counterpart import UnsupportedModuleError
from funcdl.layers.ctc import CTCBeamDecoder, ctc_greedy_decode
from funcdl.layers.module import Module
from funcdl.layers.normalization import RMSNorm
from funcdl.layers.pooling import (
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    AvgPool1d,
    AvgPool2d,
    Flatten,
    MaxPool1d,
    MaxPool2d,
)
from funcdl.layers.recurrent import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from funcdl.layers.safetensors_io import load_safetensors, save_safetensors
from funcdl.layers.sequential import (
    GELU,
    Identity,
    LeakyReLU,
    ReLU,
    SequenceFirst,
    Sequential,
    Sigmoid,
    SiLU,
    Tanh,
)
from funcdl.layers.torch_io import (
    from_torch,
    load_torch_state_dict,
    to_torch,
    to_torch_state_dict,
    torch_state_dict_keys,
)
from funcdl.layers.transformer import (
    FeedForward,
    MLMHead,
    TransformerClassifier,
    TransformerEncoder,
    TransformerEncoderLayer,
)
from funcdl.layers.transformers_io import (
    from_transformers,
    load_transformers,
    save_transformers,
)

__all__ = [
    "Module",
    "scaled_dot_product_attention",
    "causal_mask",
    "Linear",
    "Embedding",
    "PositionalEmbedding",
    "sinusoidal_table",
    "LayerNorm",
    "Dropout",
    "MLP",
    "AttentionHead",
    "MultiHeadAttention",
    "FeedForward",
    "TransformerEncoderLayer",
    "TransformerEncoder",
    "TransformerClassifier",
    "MLMHead",
    "Sequential",
    "SequenceFirst",
    "ReLU",
    "GELU",
    "Tanh",
    "Sigmoid",
    "SiLU",
    "Identity",
    "LeakyReLU",
    "ELU",
    "SELU",
    "CELU",
    "ReLU6",
    "Hardtanh",
    "Hardsigmoid",
    "Hardswish",
    "Mish",
    "Softsign",
    "Tanhshrink",
    "LogSigmoid",
    "GLU",
    "Softplus",
    "Softmax",
    "LogSoftmax",
    "PReLU",
    "RMSNorm",
    "RNN",
    "LSTM",
    "GRU",
    "RNNCell",
    "LSTMCell",
    "GRUCell",
    "ctc_greedy_decode",
    "CTCBeamDecoder",
    "Conv1d",
    "Conv2d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "MaxPool1d",
    "MaxPool2d",
    "AvgPool1d",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
    "AdaptiveMaxPool2d",
    "Flatten",
    "BatchNorm1d",
    "BatchNorm2d",
    "load_torch_state_dict",
    "torch_state_dict_keys",
    "to_torch_state_dict",
    "from_torch",
    "to_torch",
    "UnsupportedModuleError",
    "TextEmbeddings",
    "Bert",
    "BertConfig",
    "BertOutput",
    "from_transformers",
    "load_transformers",
    "save_transformers",
    "save_safetensors",
    "load_safetensors",
]
