"""Training configuration: one typed, documented dataclass and three presets.

``PPOConfig`` holds every setting of a run. Each field's ``metadata["help"]`` is the text the
command line shows for its option, so the CLI and the config cannot drift apart.

Presets (published settings, see the README for citations):

* ``atari``   CleanRL ``ppo_atari_envpool.py``: 8 envs x 128 steps, 4 minibatches, 4 epochs,
  lr 2.5e-4 annealed, clip 0.1, ent 0.01, Nature CNN, episodic life + reward clipping, 10M steps.
* ``mujoco``  CleanRL ``ppo_continuous_action.py``: 1 env x 2048 steps, 32 minibatches, 10 epochs,
  lr 3e-4 annealed, clip 0.2, ent 0, 64-64 tanh MLPs, observation normalization and reward
  scaling (clipped to +-10), actions clipped to the action space, 1M steps.
* ``dmc``     dm_control from states (EnvPool's ``CheetahRun-v1``, ...): the mujoco preset's
  settings without value clipping.
* ``classic`` a small 64-64 tanh MLP tuned so that CartPole-v1 reaches a return of 500 within
  200k steps: 8 envs x 128 steps, 4 minibatches, 4 epochs, lr 2.5e-3 annealed, clip 0.2, ent 0,
  one torch thread (runs and times: bench/README.md).

The dataclass defaults are the ``classic`` preset; :data:`PRESET_SETTINGS` holds what each other
preset changes. A preset only supplies defaults: what a run does follows its settings (e.g.
``episodic_life``), never the preset's name.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

PRESETS = ("classic", "mujoco", "dmc", "atari")
# The names of fastppo.kernels.BACKENDS (their one definition, kernels/_backend.py), restated
# because importing fastppo.kernels imports torch, and option values are checked before torch is
# imported; tests/test_config.py pins the two equal.
KERNELS = ("auto", "torch", "numba", "triton")
DEVICES = ("auto", "cpu", "cuda")  # what fastppo.distributed.resolve_device accepts
POLICY_KERNELS = ("auto", "torch", "numba")
SWITCHES = ("auto", "on", "off")
NETWORKS = ("auto", "mlp", "nature_cnn")  # resolved from the spaces: fastppo.spaces.resolve_network
LOSSES = ("clip", "penalty")
PRECISIONS = ("auto", "fp32", "bf16")
RECURRENT = ("none", "lstm", "gru")
CRITIC_CORES = ("shared", "separate")
ENV_BACKENDS = ("auto", "envpool", "gymnasium")
MAX_SEED = 2**30  # seeds stay below it, leaving room for the per-env and evaluation offsets
# Settings a resumed run may change; everything else must stay as the run was started.
RESUME_OVERRIDES = frozenset({"total_timesteps", "kernels", "device", "checkpoint_every",
                              "torch_threads", "tensorboard", "dist_timeout"})
# --loss penalty: beta adapts within these bounds (0 stays 0), so a KL far from kl_target never
# drives it to 0 or to an overflowing loss.
KL_COEF_MIN, KL_COEF_MAX = 1e-4, 1e4


def _opt(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class PPOConfig:
    """Every setting of one PPO run. The defaults are the ``classic`` preset; another preset
    changes the settings in its :data:`PRESET_SETTINGS` entry, and options override both.

    Validation has one entry point, :meth:`validate`, and runs at two moments: when a config is
    made (``__post_init__``: the constructor, :meth:`from_dict` for a config.json,
    :func:`make_config`, ``dataclasses.replace``), and when :func:`fastppo.train.train` accepts
    a config, which may have had fields assigned since it was made. A config that passed
    :meth:`validate` holds every setting as its type hint says (ints as ``int``, numbers as
    ``float``) within its range, and its settings fit each other.
    """

    env_id: str = _opt("CartPole-v1", "environment id: an EnvPool task id (CartPole-v1, "
                                      "HalfCheetah-v4, Pong-v5, ...), a Gymnasium id, or "
                                      "module:EnvId-v0 (imports module, which registers the env)")
    env_backend: str = _opt("auto", "what steps the envs: envpool, gymnasium (Gymnasium vector "
                                    "envs, sync or async), or auto (EnvPool for its task ids, "
                                    "Gymnasium for any other id and for an env_fn)",
                            choices=ENV_BACKENDS)
    preset: str = _opt("classic", "settings bundle: classic, mujoco, dmc or atari",
                       choices=PRESETS,
                       cli=False)
    seed: int = _opt(1, "seed of python, numpy, torch and the environments")
    total_timesteps: int = _opt(200_000, "environment steps to train for (all envs of all ranks "
                                         "together: the budget is global)")
    # rollout
    num_envs: int = _opt(8, "parallel environments stepped by EnvPool, per rank under torchrun")
    num_steps: int = _opt(128, "steps per environment in each rollout (T)")
    # optimisation
    learning_rate: float = _opt(2.5e-3, "Adam learning rate (eps 1e-5)")
    anneal_lr: bool = _opt(True, "anneal the learning rate linearly to 0 over the run")
    num_minibatches: int = _opt(4, "minibatches per epoch; must divide num_envs * num_steps")
    update_epochs: int = _opt(4, "passes over each rollout")
    max_grad_norm: float = _opt(0.5, "clip the global gradient norm to this value")
    target_kl: float | None = _opt(None, "stop an update's epochs once approx_kl exceeds this")
    # PPO loss
    gamma: float = _opt(0.99, "discount factor")
    gae_lambda: float = _opt(0.95, "GAE lambda")
    clip_coef: float = _opt(0.2, "PPO surrogate (and value) clipping coefficient (unused with "
                                 "--loss penalty)")
    clip_vloss: bool = _opt(True, "clip the value loss around the old values (unused with --loss "
                                  "penalty, whose value loss is unclipped)")
    norm_adv: bool = _opt(True, "normalize advantages per minibatch")
    ent_coef: float = _opt(0.0, "entropy bonus coefficient")
    vf_coef: float = _opt(0.5, "value loss coefficient")
    loss: str = _opt("clip", "PPO objective: clip (the clipped surrogate and value loss) or "
                             "penalty (PPO-penalty: the unclipped surrogate plus kl_coef * "
                             "KL(pi_old || pi) and the unclipped value loss; clip_coef and "
                             "clip_vloss are unused)", choices=LOSSES)
    kl_coef: float = _opt(1.0, "--loss penalty: the initial KL coefficient beta, 0 or in "
                               "[1e-4, 1e4]; after each update beta is halved if the update's "
                               "mean KL is below kl_target / 1.5 and doubled if above 1.5 * "
                               "kl_target, kept within [1e-4, 1e4] (0 stays 0)")
    kl_target: float = _opt(0.01, "--loss penalty: the KL per update that beta adapts towards "
                                  "(d_targ)")
    # environment processing
    episodic_life: bool = _opt(False, "Atari: a lost life ends the training episode")
    reward_clip: bool = _opt(False, "Atari: clip rewards to their sign")
    frame_stack: int = _opt(1, "observations the policy sees at once: the last K, stacked (images "
                               "along their channels, vectors side by side), for envs that do "
                               "not stack frames themselves; 1: the current one")
    stack_num: int | None = _opt(None, "EnvPool's Atari and ViZDoom tasks: the frames EnvPool "
                                       "stacks into each observation (its stack_num option; "
                                       "none: EnvPool's default, 4); 1 for a recurrent policy "
                                       "that remembers instead, as CleanRL's ppo_atari_lstm.py. "
                                       "--frame-stack stacks in fastppo, for any env")
    norm_obs: bool = _opt(False, "normalize observations with running statistics")
    norm_reward: bool = _opt(False, "scale rewards by the running std of the discounted return")
    clip_obs: float = _opt(10.0, "clip normalized observations to +-this")
    clip_reward: float = _opt(10.0, "clip scaled rewards to +-this")
    # network
    network: str = _opt("auto", "policy network: mlp (tanh MLPs over the flattened observation), "
                                "nature_cnn (a CNN over the image parts, the Nature CNN at 36+ "
                                "pixels a side), or auto (nature_cnn when the observation has an "
                                "image, mlp otherwise)", choices=NETWORKS)
    hidden_size: int = _opt(64, "width of the two hidden layers of the MLPs")
    recurrent: str = _opt("none", "a recurrent core between the network's body and its heads: "
                                  "lstm, gru, or none (for partially observed tasks; the policy "
                                  "trains on whole env sequences, num_envs a multiple of "
                                  "num_minibatches)", choices=RECURRENT)
    rnn_hidden_size: int = _opt(128, "--recurrent: the width of the LSTM/GRU state")
    rnn_layers: int = _opt(1, "--recurrent: stacked LSTM/GRU layers")
    critic_core: str = _opt("shared", "--recurrent: the value head reads the policy's core "
                                      "(shared) or a core of its own (separate)",
                            choices=CRITIC_CORES)
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
    torch_threads: int = _opt(1, "torch intra-op threads (0: torch's default); 1 is fastest for "
                                 "small MLPs, whose ops are too short to split across threads")
    precision: str = _opt("auto", "network arithmetic: fp32; bf16 (autocast forward and backward "
                                  "of the torch-served network; float32 weights, optimizer, GAE "
                                  "and loss); or auto (bf16 for the CNN where the device has bf16 "
                                  "matrix units: AMX or AVX512-BF16 CPUs, bf16 CUDA GPUs; fp32 "
                                  "otherwise)", choices=PRECISIONS)
    checkpoint_every: int = _opt(50, "save a checkpoint every this many updates (0: only at the "
                                     "end)")
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

    def __post_init__(self) -> None:
        """Check every setting at construction (ValueError naming the field)."""
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the setting when the run cannot work; checks no environment.

        Types are checked first (a bool is not an integer, a string is not a number), then each
        setting's range (float settings must be finite), then the settings that depend on each
        other. Integral and real numbers (numpy's too) are stored as Python ints and floats.
        """
        for f in dataclasses.fields(self):
            setattr(self, f.name, check_setting(f.name, getattr(self, f.name)))
        if self.batch_size % self.num_minibatches:
            raise ValueError(
                f"num_minibatches: the batch of num_envs * num_steps = {self.num_envs} * "
                f"{self.num_steps} = {self.batch_size} transitions cannot be split into "
                f"{self.num_minibatches} equal minibatches"
            )
        if self.recurrent != "none" and self.num_envs % self.num_minibatches:
            raise ValueError(
                f"num_minibatches: a recurrent policy trains on whole env sequences, so "
                f"num_envs ({self.num_envs}) must be a multiple of num_minibatches "
                f"({self.num_minibatches})")
        if self.recurrent == "none" and self.critic_core != "shared":
            raise ValueError(f"critic_core: {self.critic_core!r} needs a recurrent policy "
                             "(--recurrent lstm or gru)")
        if self.recurrent != "none" and self.loss == "penalty":
            raise ValueError("recurrent: --loss penalty is not available for recurrent policies; "
                             "use --loss clip")
        if self.minibatch_size < 2:
            raise ValueError(f"num_minibatches: minibatches of {self.minibatch_size} transition "
                             "cannot normalize advantages; use fewer minibatches")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PPOConfig":
        """The config of ``data`` (e.g. a run's config.json), which must name every setting but
        those of :data:`ADDED_SETTINGS` (missing ones take their default)."""
        if not isinstance(data, dict):
            raise ValueError(f"config: expected an object of settings, got {_json_kind(data)}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"config: unknown settings {unknown}")
        missing = [name for name in known if name not in data and name not in ADDED_SETTINGS]
        if missing:
            raise ValueError(f"config: missing settings {missing}")
        return cls(**{**ADDED_SETTINGS, **data})


# Settings added after runs were first saved, with what a run did before each existed: a
# config.json written then (an old run to resume or evaluate) lacks the setting and gets this
# value (the default, but fp32 arithmetic for runs from before --precision). Every other setting
# must be in a config.json.
ADDED_SETTINGS = {"loss": PPOConfig.loss, "kl_coef": PPOConfig.kl_coef,
                  "kl_target": PPOConfig.kl_target, "precision": "fp32", "env_backend": "auto",
                  "frame_stack": 1, "recurrent": "none", "rnn_hidden_size": 128,
                  "stack_num": None, "critic_core": "shared", "rnn_layers": 1}

_POSITIVE_INTS = ("num_envs", "num_steps", "num_minibatches", "update_epochs", "total_timesteps",
                  "hidden_size", "frame_stack", "rnn_hidden_size", "stack_num", "rnn_layers")
_NONNEGATIVE_INTS = ("torch_threads", "checkpoint_every")
_UNIT_INTERVAL = ("gamma", "gae_lambda")
_POSITIVE_FLOATS = ("learning_rate", "clip_coef", "max_grad_norm", "clip_obs", "clip_reward",
                    "dist_timeout", "target_kl", "kl_target")
_NONNEGATIVE_FLOATS = ("ent_coef", "vf_coef", "kl_coef")
_KIND = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def hint_parts(hint) -> tuple[type, bool, tuple | None]:
    """``(value type, may be None, choices)`` of a type hint: ``float | None`` and
    ``Optional[float]`` give ``(float, True, None)``, ``Literal["a", "b"]`` gives
    ``(str, False, ("a", "b"))``. TypeError for a union of two value types."""
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        if len(args) != 1:
            raise TypeError(f"expected one value type (or it and None), got {hint}")
        hint = args[0]
    choices = None
    if typing.get_origin(hint) is typing.Literal:
        choices = typing.get_args(hint)
        hint = type(choices[0])
    return hint, optional, choices


@functools.cache
def field_types() -> dict[str, tuple[type, bool, tuple | None]]:
    """Each setting's :func:`hint_parts`, from the evaluated type hints of :class:`PPOConfig`;
    the choices of a ``str`` setting come from its ``metadata["choices"]``."""
    hints = typing.get_type_hints(PPOConfig)
    parts = {}
    for f in dataclasses.fields(PPOConfig):
        kind, optional, choices = hint_parts(hints[f.name])
        parts[f.name] = (kind, optional, choices or f.metadata.get("choices"))
    return parts


def _json_kind(value) -> str:
    """How a value reads in a message: ``null``, ``a list``, ``'0.99' (a str)``, ..."""
    if value is None:
        return "null"
    kind = type(value).__name__
    kind = ("an " if kind[0] in "aeiou" else "a ") + kind
    if isinstance(value, (dict, list, tuple)):
        return kind
    return f"{value!r} ({kind})"


def check_setting(name: str, value):
    """``value`` as the setting ``name`` stores it (ints as int, numbers as float); ValueError
    naming the setting when its type or range is wrong. Checks this one setting only."""
    if name not in field_types():
        raise ValueError(f"config: unknown setting {name!r}")
    kind, optional, choices = field_types()[name]
    if optional and value is None:
        return None
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is str:
        ok = isinstance(value, str)
    elif kind is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    else:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok:
        none = " or None" if optional else ""
        raise ValueError(f"{name}: expected {_KIND[kind]}{none}, got {_json_kind(value)}")
    if kind is int:
        value = int(value)
    elif kind is float:
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{name}: expected a finite number, got {value}")
    if choices is not None and value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
    if name == "env_id" and not value.strip():
        raise ValueError("env_id: expected an environment id, got an empty string")
    if name == "seed" and not 0 <= value < MAX_SEED:
        raise ValueError(f"seed: expected an integer in [0, 2**30), got {value}")
    if name in _POSITIVE_INTS and value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value}")
    if name in _NONNEGATIVE_INTS and value < 0:
        raise ValueError(f"{name}: expected a nonnegative integer, got {value}")
    if name in _UNIT_INTERVAL and not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: expected a value in [0, 1], got {value}")
    if name in _POSITIVE_FLOATS and not value > 0:
        none = " or None" if optional else ""
        raise ValueError(f"{name}: expected a positive number{none}, got {value}")
    if name in _NONNEGATIVE_FLOATS and value < 0:
        raise ValueError(f"{name}: expected a nonnegative number, got {value}")
    if name == "kl_coef" and value != 0 and not KL_COEF_MIN <= value <= KL_COEF_MAX:
        raise ValueError(f"kl_coef: expected 0 or a number in [{KL_COEF_MIN:g}, "
                         f"{KL_COEF_MAX:g}], got {value:g}")
    return value


def check_settings(settings: dict) -> None:
    """Check each of ``settings`` on its own (no preset, no environment): the fast first check
    of command-line options. The settings that depend on each other are checked by
    :meth:`PPOConfig.validate` once the preset is known."""
    for name, value in settings.items():
        check_setting(name, value)


def read_run_config(run_dir: str | Path) -> PPOConfig:
    """The config in ``RUN_DIR/config.json``; ValueError naming the file when it is missing, not
    JSON, not an object of settings, or holds a setting of the wrong type or range."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ValueError(f"{run_dir} has no config.json; not a fastppo run directory")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read it ({err})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    try:
        return PPOConfig.from_dict(data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {str(err).removeprefix('config: ')}") from None


def config_mismatch(config: PPOConfig, saved: dict) -> str | None:
    """The first setting (other than :data:`RESUME_OVERRIDES`) where ``config`` differs from
    the ``saved`` settings of a checkpoint, as ``"name is X but ... Y"``; None if they agree.
    Settings the checkpoint does not record are not compared."""
    for name, value in config.to_dict().items():
        if name in RESUME_OVERRIDES or name not in saved:
            continue
        if saved[name] != value:
            return f"{name} is {value!r} but the checkpoint was trained with {saved[name]!r}"
    return None


# CleanRL ppo_continuous_action.py's settings: the mujoco preset, and the dmc preset (dm_control
# from states, e.g. EnvPool's CheetahRun-v1), which drops the value clipping (as SB3's PPO does;
# the runs that chose it: bench/README.md, "dm_control").
_CLEANRL_CONTINUOUS = dict(
    total_timesteps=1_000_000, num_envs=1, num_steps=2048, learning_rate=3e-4,
    num_minibatches=32, update_epochs=10, norm_obs=True, norm_reward=True,
)
# Settings each preset changes from the dataclass defaults (which are the ``classic`` preset):
# only the keys whose value differs, so every entry reads as what the preset is about.
PRESET_SETTINGS: dict[str, dict] = {
    # CleanRL ppo_atari_envpool.py
    "atari": dict(
        total_timesteps=10_000_000, learning_rate=2.5e-4, clip_coef=0.1, ent_coef=0.01,
        episodic_life=True, reward_clip=True, network="nature_cnn", torch_threads=0,
    ),
    "mujoco": _CLEANRL_CONTINUOUS,
    "dmc": {**_CLEANRL_CONTINUOUS, "clip_vloss": False},
    # Tuned here for CartPole-class tasks (the runs: bench/README.md, learning.py): the defaults.
    "classic": dict(),
}


QT_LIBRARIES = ("libQt5Core.so.5", "libQt5Gui.so.5")  # what EnvPool's Procgen links against


@functools.cache
def qt_for_procgen() -> bool:
    """Whether EnvPool's Procgen finds the Qt 5 libraries it links against: the system's, or
    those of the ``PyQt5-Qt5`` wheel (``pip install "fastppo[procgen]"``), which this loads into
    the process so that the dynamic linker finds them already loaded. Must run before envpool
    is first imported (:func:`import_envpool`), which is when EnvPool loads Procgen."""
    import ctypes
    import ctypes.util
    import importlib.util
    import os

    if ctypes.util.find_library("Qt5Gui"):
        return True
    spec = importlib.util.find_spec("PyQt5")
    for package in (spec.submodule_search_locations or []) if spec is not None else []:
        folder = os.path.join(package, "Qt5", "lib")
        if all(os.path.exists(os.path.join(folder, name)) for name in QT_LIBRARIES):
            for name in QT_LIBRARIES:
                ctypes.CDLL(os.path.join(folder, name), mode=ctypes.RTLD_GLOBAL)
            return True
    return False


def import_envpool():
    """The ``envpool`` module, imported after :func:`qt_for_procgen`."""
    qt_for_procgen()
    import envpool

    return envpool


@functools.cache
def envpool_families() -> dict[str, str]:
    """Every EnvPool task id with the module that defines it (:func:`envpool_family`)."""
    import_envpool()
    from envpool.registration import registry

    return {env_id: spec[0] for env_id, spec in registry.specs.items()}


def envpool_family(env_id: str) -> str:
    """The EnvPool module that defines ``env_id`` (``envpool.atari``, ``envpool.mujoco.dmc``,
    ...); "" for an id EnvPool does not have."""
    return envpool_families().get(env_id, "")


def is_atari_task(env_id: str) -> bool:
    """Whether ``env_id`` is one of EnvPool's Atari tasks (``*-v5``): games with lives, whose
    ``info`` holds the unclipped reward and the real end of the game."""
    return envpool_family(env_id) == "envpool.atari"


PRESET_OF_FAMILY = {"envpool.atari": "atari", "envpool.mujoco.gym": "mujoco",
                    "envpool.mujoco.dmc": "dmc"}


def preset_for_env(env_id: str) -> str:
    """``atari`` for EnvPool's Atari (``*-v5``) ids, ``mujoco`` for its Gym MuJoCo ids, ``dmc``
    for its dm_control ids, else ``classic``."""
    return PRESET_OF_FAMILY.get(envpool_family(env_id), "classic")


def make_config(env_id: str, preset: str | None = None, **overrides) -> PPOConfig:
    """The preset's settings (inferred from ``env_id`` when ``preset`` is None) plus overrides.

    ``overrides`` whose value is None are ignored, except those of settings that may be None
    (``target_kl``).
    """
    check_setting("env_id", env_id)
    if preset is None:
        preset = preset_for_env(env_id)
    check_setting("preset", preset)
    settings = dict(PRESET_SETTINGS[preset])
    optional = {name for name, (_, may_be_none, _) in field_types().items() if may_be_none}
    settings.update({k: v for k, v in overrides.items() if v is not None or k in optional})
    known = {f.name for f in dataclasses.fields(PPOConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"config: unknown settings {unknown}")
    return PPOConfig(env_id=env_id, preset=preset, **settings)
