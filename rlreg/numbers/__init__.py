"""Number tokenizers and target scalers (pure Python + NumPy: no torch, pandas or vLLM here).

    tok = build_number_tokenizer({"tokenizer": "normalized", "base": 2, "length": 8})
    scaler = build_scaler("zscore_minmax").fit(train_y)
    ids = tok.encode_ids(float(scaler.transform(y)))
    y_hat = scaler.inverse_transform(tok.decode_many(sampled_ids)[0])
"""

from rlreg.numbers.base import NumberTokenizer
from rlreg.numbers.config import NumbersConfig
from rlreg.numbers.ieee import IEEEStyle
from rlreg.numbers.normalized import NormalizedDigits
from rlreg.numbers.p10 import P10
from rlreg.numbers.registry import (
    NUMBER_TOKENIZERS,
    build_number_tokenizer,
    number_tokenizer_names,
    register_number_tokenizer,
)
from rlreg.numbers.scalers import (
    SCALERS,
    Identity,
    Quantile,
    SignedLog,
    TargetScaler,
    ZScoreMinMax,
    build_scaler,
    register_scaler,
    scaler_from_state_dict,
)

__all__ = [
    "NUMBER_TOKENIZERS",
    "SCALERS",
    "IEEEStyle",
    "Identity",
    "NormalizedDigits",
    "NumberTokenizer",
    "NumbersConfig",
    "P10",
    "Quantile",
    "SignedLog",
    "TargetScaler",
    "ZScoreMinMax",
    "build_number_tokenizer",
    "build_scaler",
    "number_tokenizer_names",
    "register_number_tokenizer",
    "register_scaler",
    "scaler_from_state_dict",
]
