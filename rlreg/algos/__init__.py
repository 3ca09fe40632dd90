"""RL algorithm pieces: advantage estimators and reward functions (registries, NumPy), group
filtering, one step's experience (rlreg.algos.experience, NumPy) and the learner's losses and
objectives (torch: `rlreg.algos.losses`, `.token_losses`).

Only the NumPy parts are imported here so that reward-pool workers do not load torch."""
from rlreg.algos.advantages import ADVANTAGES, get_advantage, needs_greedy, register_advantage
from rlreg.algos.experience import Experience, LearnerBatch, make_experience
from rlreg.algos.filtering import filtered_fraction, std_filter
from rlreg.algos.rewards import REWARDS, check_rewards, load_reward, register_reward

__all__ = [
    "ADVANTAGES",
    "REWARDS",
    "Experience",
    "LearnerBatch",
    "check_rewards",
    "filtered_fraction",
    "get_advantage",
    "load_reward",
    "make_experience",
    "needs_greedy",
    "register_advantage",
    "register_reward",
    "std_filter",
]
