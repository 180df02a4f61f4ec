"""Training configuration: one typed, documented dataclass and three presets.

``PPOConfig`` holds every setting of a run. Each field's ``metadata["help"]`` is the text the
command line shows for its option, so the CLI and the config cannot drift apart.

Presets (published settings, see the README for citations):

* ``atari``   CleanRL ``ppo_atari_envpool.py``: 8 envs x 128 steps, 4 minibatches, 4 epochs,
  lr 2.5e-4 annealed, clip 0.1, ent 0.01, Nature CNN, episodic life + reward clipping, 10M steps.
* ``mujoco``  CleanRL ``ppo_continuous_action.py``: 1 env x 2048 steps, 32 minibatches, 10 epochs,
  lr 3e-4 annealed, clip 0.2, ent 0, 64-64 tanh MLPs, observation normalization and reward
  scaling (clipped to +-10), actions clipped to the action space, 1M steps.
* ``classic`` a small 64-64 tanh MLP tuned so that CartPole-v1 reaches a return of 500 within
  200k steps in about a minute on two CPU cores.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

PRESETS = ("classic", "mujoco", "atari")
KERNELS = ("auto", "torch", "numba", "triton")
DEVICES = ("auto", "cpu", "cuda")
POLICY_KERNELS = ("auto", "torch", "numba")
SWITCHES = ("auto", "on", "off")


def _opt(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class PPOConfig:
    """Every setting of one PPO run (the preset fills the defaults, options override them)."""

    env_id: str = _opt("CartPole-v1", "EnvPool task id, e.g. CartPole-v1, HalfCheetah-v4, Pong-v5")
    preset: str = _opt("classic", "settings bundle: classic, mujoco or atari", cli=False)
    seed: int = _opt(1, "seed of python, numpy, torch and the environments")
    total_timesteps: int = _opt(200_000, "environment steps to train for (all envs of all ranks "
                                         "together: the budget is global)")
    # rollout
    num_envs: int = _opt(8, "parallel environments stepped by EnvPool, per rank under torchrun")
    num_steps: int = _opt(128, "steps per environment in each rollout (T)")
    # optimisation
    learning_rate: float = _opt(2.5e-4, "Adam learning rate (eps 1e-5)")
    anneal_lr: bool = _opt(True, "anneal the learning rate linearly to 0 over the run")
    num_minibatches: int = _opt(4, "minibatches per epoch; must divide num_envs * num_steps")
    update_epochs: int = _opt(4, "passes over each rollout")
    max_grad_norm: float = _opt(0.5, "clip the global gradient norm to this value")
    target_kl: float | None = _opt(None, "stop an update's epochs once approx_kl exceeds this")
    # PPO loss
    gamma: float = _opt(0.99, "discount factor")
    gae_lambda: float = _opt(0.95, "GAE lambda")
    clip_coef: float = _opt(0.1, "PPO surrogate (and value) clipping coefficient")
    clip_vloss: bool = _opt(True, "clip the value loss around the old values")
    norm_adv: bool = _opt(True, "normalize advantages per minibatch")
    ent_coef: float = _opt(0.01, "entropy bonus coefficient")
    vf_coef: float = _opt(0.5, "value loss coefficient")
    # environment processing
    episodic_life: bool = _opt(False, "Atari: a lost life ends the training episode")
    reward_clip: bool = _opt(False, "Atari: clip rewards to their sign")
    norm_obs: bool = _opt(False, "normalize observations with running statistics")
    norm_reward: bool = _opt(False, "scale rewards by the running std of the discounted return")
    clip_obs: float = _opt(10.0, "clip normalized observations to +-this")
    clip_reward: float = _opt(10.0, "clip scaled rewards to +-this")
    # network
    network: str = _opt("mlp", "policy network: mlp or nature_cnn", choices=("mlp", "nature_cnn"))
    hidden_size: int = _opt(64, "width of the two hidden layers of the MLPs")
    # engine
    kernels: str = _opt("auto", "fused-op backend: auto, torch, numba or triton", choices=KERNELS)
    device: str = _opt("auto", "training device: auto (cuda if available), cpu or cuda",
                       choices=DEVICES)
    policy_kernel: str = _opt("auto", "MLP policy on the CPU: numba (fused kernels for inference "
                                      "and the minibatch forward/backward), torch, or auto "
                                      "(numba for MLPs on the CPU, torch otherwise)",
                              choices=POLICY_KERNELS)
    compile: str = _opt("auto", "torch.compile the policy call and the minibatch step (CUDA "
                                "graphs on CUDA): on, off, or auto (on for CUDA and for the "
                                "CNN)", choices=SWITCHES)
    async_envs: str = _opt("auto", "step two halves of the envs alternately, overlapping env "
                                   "stepping with inference: on, off, or auto (on with 2 or more "
                                   "envs, except for a CNN on the CPU)", choices=SWITCHES)
    torch_threads: int = _opt(0, "torch intra-op threads (0: torch's default); 1 is fastest for "
                                 "small MLPs, whose ops are too short to split across threads")
    checkpoint_every: int = _opt(50, "save a checkpoint every this many updates (0: only at the end)")
    tensorboard: bool = _opt(True, "write TensorBoard event files")
    dist_timeout: float = _opt(300.0, "torchrun runs: seconds a rank waits for the others (the "
                                      "rendezvous and every collective) before the job fails")

    @property
    def batch_size(self) -> int:
        """Transitions per rollout: num_envs * num_steps."""
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    @property
    def num_updates(self) -> int:
        """Rollout/update cycles of a single process; see :meth:`updates_for`."""
        return self.updates_for(1)

    def updates_for(self, world_size: int) -> int:
        """Rollout/update cycles of ``world_size`` data-parallel ranks: total_timesteps rounded
        down to whole global rollouts of world_size * batch_size steps (at least 1)."""
        return max(1, self.total_timesteps // (world_size * self.batch_size))

    def validate(self) -> None:
        """Raise ValueError naming the setting when the run cannot work; checks no environment."""
        if self.preset not in PRESETS:
            raise ValueError(f"preset: expected one of {PRESETS}, got {self.preset!r}")
        for name in ("num_envs", "num_steps", "num_minibatches", "update_epochs",
                     "total_timesteps", "hidden_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        if self.batch_size % self.num_minibatches:
            raise ValueError(
                f"num_minibatches: the batch of num_envs * num_steps = {self.num_envs} * "
                f"{self.num_steps} = {self.batch_size} transitions cannot be split into "
                f"{self.num_minibatches} equal minibatches"
            )
        if self.minibatch_size < 2:
            raise ValueError(f"num_minibatches: minibatches of {self.minibatch_size} transition "
                             "cannot normalize advantages; use fewer minibatches")
        for name in ("gamma", "gae_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: expected a value in [0, 1], got {getattr(self, name)}")
        for name in ("learning_rate", "clip_coef", "max_grad_norm", "clip_obs", "clip_reward",
                     "dist_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: expected a positive number, got {getattr(self, name)}")
        for name in ("ent_coef", "vf_coef", "torch_threads", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected a nonnegative number, got {getattr(self, name)}")
        if self.target_kl is not None and not self.target_kl > 0:
            raise ValueError(f"target_kl: expected a positive number or None, got {self.target_kl}")
        if self.kernels not in KERNELS:
            raise ValueError(f"kernels: expected one of {KERNELS}, got {self.kernels!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device: expected one of {DEVICES}, got {self.device!r}")
        for name, choices in (("policy_kernel", POLICY_KERNELS), ("compile", SWITCHES),
                              ("async_envs", SWITCHES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}: expected one of {choices}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PPOConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config: unknown settings {unknown}")
        return cls(**data)


# Settings each preset changes from the dataclass defaults.
PRESET_SETTINGS: dict[str, dict] = {
    # CleanRL ppo_atari_envpool.py
    "atari": dict(
        total_timesteps=10_000_000, num_envs=8, num_steps=128, learning_rate=2.5e-4,
        anneal_lr=True, num_minibatches=4, update_epochs=4, gamma=0.99, gae_lambda=0.95,
        clip_coef=0.1, clip_vloss=True, norm_adv=True, ent_coef=0.01, vf_coef=0.5,
        max_grad_norm=0.5, episodic_life=True, reward_clip=True, network="nature_cnn",
    ),
    # CleanRL ppo_continuous_action.py
    "mujoco": dict(
        total_timesteps=1_000_000, num_envs=1, num_steps=2048, learning_rate=3e-4,
        anneal_lr=True, num_minibatches=32, update_epochs=10, gamma=0.99, gae_lambda=0.95,
        clip_coef=0.2, clip_vloss=True, norm_adv=True, ent_coef=0.0, vf_coef=0.5,
        max_grad_norm=0.5, norm_obs=True, norm_reward=True, clip_obs=10.0, clip_reward=10.0,
        network="mlp", hidden_size=64, torch_threads=1,
    ),
    # Tuned here for CartPole-class tasks (see the README for the measurement).
    "classic": dict(
        total_timesteps=200_000, num_envs=8, num_steps=128, learning_rate=2.5e-3,
        anneal_lr=True, num_minibatches=4, update_epochs=4, gamma=0.99, gae_lambda=0.95,
        clip_coef=0.2, clip_vloss=True, norm_adv=True, ent_coef=0.0, vf_coef=0.5,
        max_grad_norm=0.5, network="mlp", hidden_size=64, torch_threads=1,
    ),
}


@functools.cache
def _registry_modules() -> dict[str, str]:
    from envpool.registration import registry

    return {env_id: spec[0] for env_id, spec in registry.specs.items()}


def preset_for_env(env_id: str) -> str:
    """``atari`` for EnvPool's Atari (``*-v5``) ids, ``mujoco`` for its Gym MuJoCo ids, else
    ``classic``."""
    module = _registry_modules().get(env_id, "")
    if module == "envpool.atari":
        return "atari"
    if module == "envpool.mujoco.gym":
        return "mujoco"
    return "classic"


def make_config(env_id: str, preset: str | None = None, **overrides) -> PPOConfig:
    """The preset's settings (inferred from ``env_id`` when ``preset`` is None) plus overrides.

    ``overrides`` whose value is None are ignored, except ``target_kl`` which is optional.
    """
    if preset is None:
        preset = preset_for_env(env_id)
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {PRESETS}, got {preset!r}")
    settings = dict(PRESET_SETTINGS[preset])
    settings.update({k: v for k, v in overrides.items() if v is not None or k == "target_kl"})
    known = {f.name for f in dataclasses.fields(PPOConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"config: unknown settings {unknown}")
    config = PPOConfig(env_id=env_id, preset=preset, **settings)
    config.validate()
    return config
