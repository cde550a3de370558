"""Logger tests; the keys of DESIGN §2 every logger must receive (3-experience streams)."""

DESIGN_KEYS = [
    "train/loss",
    "test/acc_exp0",
    "test/acc_exp1",
    "test/acc_exp2",
    "stream/average_accuracy",
    "stream/forgetting",
    "stream/backward_transfer",
    "stream/forward_transfer",
]
