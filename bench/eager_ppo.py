"""A plain eager PPO loop, CleanRL-style, on the same EnvPool env and settings as fastppo.

    python bench/eager_ppo.py CartPole-v1 --updates 60          # train, print return per update
    python bench/eager_ppo.py HalfCheetah-v4 --updates 4 --warmup 1
    python bench/eager_ppo.py Pong-v5 --recurrent lstm --stack-num 1 --updates 4   # ppo_atari_lstm

This is the reference ``bench/e2e.py`` compares fastppo against: what a user's script in the
style of CleanRL's ``ppo_continuous_action.py`` / ``ppo_atari_envpool.py`` does, written here
from the README's equations (GAE, the fused PPO loss), with no special optimization: an
``nn.Module`` agent with orthogonal init, ``torch.distributions`` for sampling, GAE as a Python
loop over the T steps, shuffled minibatches, clipped surrogate + clipped value loss + entropy,
advantages normalized per minibatch, ``nn.utils.clip_grad_norm_``,
``torch.optim.Adam(eps=1e-5)`` with linear learning-rate annealing.

* Environments: ``envpool.make(env_id, env_type="gymnasium", num_envs, seed)``; Atari with
  ``episodic_life`` and ``reward_clip`` (returns counted over whole games, from EnvPool's raw
  ``info["reward"]`` and ``info["terminated"]``); MuJoCo with observation normalization and reward
  scaling in numpy, as gymnasium's NormalizeObservation / NormalizeReward, clipped to +-10, and
  continuous actions clipped to the action space.
* EnvPool's next-step autoreset: the step after a done returns the reset observation with reward
  0 and ignores its action. That step is recorded with ``valid = 0``: its advantage is 0 and it
  has weight 0 in every mean of the loss. After a done, ``values[t+1]`` is V(final observation),
  so truncated episodes bootstrap from it and terminated ones do not.
* Hyperparameters come from fastppo's presets (``fastppo.config.make_config(env_id)``), so the two
  sides always run the same settings; ``torch.set_num_threads(config.torch_threads)`` when the
  preset sets it (restored on return).

Recurrent policies (``config.recurrent`` ``lstm`` or ``gru``, as CleanRL's
``ppo_atari_lstm.py``): the body (the Nature CNN's 512 features, or one tanh layer of
``hidden_size`` for vectors) feeds an ``nn.LSTM``/``nn.GRU`` of ``rnn_hidden_size`` (biases 0,
orthogonal weights of gain 1), then linear actor and critic heads. It is stepped one step at a
time in the rollout and in the update alike (one ``nn.LSTM`` call per step, the state multiplied
by ``1 - start``); ``start[t]`` marks the steps whose observation begins an episode: with
next-step autoreset, the step after a reset step (whose observation is the final one of the old
episode, so its state is the old episode's). Each rollout keeps the state it began with; a
minibatch is ``num_envs / num_minibatches`` whole envs (shuffled per epoch), unrolled over the
rollout's T steps from that stored state. ``config.stack_num`` is passed to EnvPool.

``run_eager(env_id, num_updates, seed, warmup_updates)`` returns the steady-state SPS (the steps
of the updates after the warm-up ones over their wall time), the mean per-update time split
(env stepping, policy inference, the whole rollout, learning = GAE + epochs) over those updates,
and the mean return of the last 10 finished episodes. Timings are ``time.perf_counter`` around
``env.step``, around the policy call, around the rollout and around the learning phase.
"""

from __future__ import annotations

import argparse
import collections
import math
import random
import time
import warnings

import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical, Normal


# --------------------------------------------------------------------------- environment helpers
class RunningMeanStd:
    """Running mean/variance of batches of rows (parallel-variance merge), float64."""

    def __init__(self, shape=()):
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = 1e-4

    def update(self, x: np.ndarray) -> None:
        if x.shape[0] == 0:
            return
        batch_mean, batch_var, n = x.mean(axis=0), x.var(axis=0), x.shape[0]
        delta = batch_mean - self.mean
        total = self.count + n
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.mean = self.mean + delta * n / total
        self.var = m2 / total
        self.count = total


class NormalizeObservation:
    """(obs - mean) / sqrt(var + eps) with running statistics of every observation seen,
    clipped to +-clip (gymnasium's NormalizeObservation followed by a clipping transform)."""

    def __init__(self, shape, clip: float, eps: float = 1e-8):
        self.rms, self.clip, self.eps = RunningMeanStd(shape), clip, eps

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        self.rms.update(obs.astype(np.float64))
        out = (obs - self.rms.mean) / np.sqrt(self.rms.var + self.eps)
        return np.clip(out, -self.clip, self.clip).astype(np.float32)


class NormalizeReward:
    """reward / sqrt(var(G) + eps), G = gamma * G + reward the discounted return of each env,
    clipped to +-clip (gymnasium's NormalizeReward followed by a clipping transform).

    With next-step autoreset, G restarts at 0 after a done, and the reset step that follows
    (reward 0, ``valid`` False) neither adds to G nor enters the statistics."""

    def __init__(self, num_envs: int, gamma: float, clip: float, eps: float = 1e-8):
        self.rms, self.gamma, self.clip, self.eps = RunningMeanStd(()), gamma, clip, eps
        self.G = np.zeros(num_envs, np.float64)

    def __call__(self, reward: np.ndarray, done: np.ndarray, valid: np.ndarray) -> np.ndarray:
        self.G = np.where(valid, self.G * self.gamma + reward, self.G)
        self.rms.update(self.G[valid])
        out = reward / np.sqrt(self.rms.var + self.eps)
        self.G[done] = 0.0
        return np.clip(out, -self.clip, self.clip).astype(np.float32)


# --------------------------------------------------------------------------- agent
def layer_init(layer: nn.Module, std: float = math.sqrt(2), bias: float = 0.0) -> nn.Module:
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


class Agent(nn.Module):
    """Nature CNN (shared body, categorical actor + value heads) for image observations; separate
    tanh MLP actor and critic otherwise, with a categorical head or a Gaussian mean plus a
    state-independent log-std. ``recurrent`` ("lstm"/"gru"): body -> LSTM/GRU -> linear heads
    (module docstring); every call then takes and returns the state."""

    def __init__(self, obs_shape, action_space, hidden: int = 64, recurrent: str = "none",
                 rnn_hidden_size: int = 128):
        super().__init__()
        from gymnasium import spaces

        self.continuous = isinstance(action_space, spaces.Box)
        n_out = int(np.prod(action_space.shape)) if self.continuous else int(action_space.n)
        self.image = len(obs_shape) == 3
        self.recurrent = recurrent != "none"
        if self.image:
            self.network = nn.Sequential(
                layer_init(nn.Conv2d(obs_shape[0], 32, 8, stride=4)), nn.ReLU(),
                layer_init(nn.Conv2d(32, 64, 4, stride=2)), nn.ReLU(),
                layer_init(nn.Conv2d(64, 64, 3, stride=1)), nn.ReLU(),
                nn.Flatten(),
                layer_init(nn.Linear(64 * 7 * 7, 512)), nn.ReLU(),
            )
            width = 512
        elif self.recurrent:
            self.network = nn.Sequential(
                layer_init(nn.Linear(int(np.prod(obs_shape)), hidden)), nn.Tanh())
            width = hidden
        if self.recurrent:
            self.lstm = recurrent == "lstm"
            self.rnn = (nn.LSTM if self.lstm else nn.GRU)(width, rnn_hidden_size)
            for name, param in self.rnn.named_parameters():
                if "bias" in name:
                    nn.init.constant_(param, 0.0)
                else:
                    nn.init.orthogonal_(param, 1.0)
            width = rnn_hidden_size
        if self.image or self.recurrent:
            self.actor = layer_init(nn.Linear(width, n_out), std=0.01)
            self.critic = layer_init(nn.Linear(width, 1), std=1.0)
        else:
            d = int(np.prod(obs_shape))

            def mlp(out, std):
                return nn.Sequential(
                    layer_init(nn.Linear(d, hidden)), nn.Tanh(),
                    layer_init(nn.Linear(hidden, hidden)), nn.Tanh(),
                    layer_init(nn.Linear(hidden, out), std=std),
                )

            self.network = nn.Identity()
            self.actor = mlp(n_out, 0.01)
            self.critic = mlp(1, 1.0)
        if self.continuous:
            self.actor_logstd = nn.Parameter(torch.zeros(1, n_out))

    def features(self, x):
        return self.network(x.float() / 255.0) if self.image else self.network(x)

    def initial_state(self, num_envs: int):
        """The zero state of ``num_envs`` envs: ``(h, c)`` for the LSTM, ``h`` for the GRU,
        each (1, num_envs, rnn_hidden_size)."""
        zeros = lambda: torch.zeros(1, num_envs, self.rnn.hidden_size)  # noqa: E731
        return (zeros(), zeros()) if self.lstm else zeros()

    def get_states(self, x, state, start):
        """The core's outputs for ``x`` (T * n rows, time-major) stepped from ``state`` one step
        at a time, the state zeroed where ``start`` (T * n) is 1; returns (outputs, state)."""
        n = (state[0] if self.lstm else state).shape[1]
        hidden = self.features(x).reshape(-1, n, self.rnn.input_size)
        keep = (1.0 - start).reshape(-1, 1, n, 1)
        outs = []
        for h, k in zip(hidden, keep):
            state = (state[0] * k, state[1] * k) if self.lstm else state * k
            out, state = self.rnn(h.unsqueeze(0), state)
            outs.append(out)
        return torch.cat(outs).flatten(0, 1), state

    def get_value(self, x, state=None, start=None):
        h = self.get_states(x, state, start)[0] if self.recurrent else self.features(x)
        return self.critic(h).squeeze(-1)

    def get_action_and_value(self, x, action=None, state=None, start=None):
        """(action, log-prob, entropy, value), and the new state last for a recurrent agent."""
        if self.recurrent:
            h, state = self.get_states(x, state, start)
        else:
            h = self.features(x)
        out = self.actor(h)
        if self.continuous:
            dist = Normal(out, self.actor_logstd.expand_as(out).exp())
            if action is None:
                action = dist.sample()
            logprob, entropy = dist.log_prob(action).sum(-1), dist.entropy().sum(-1)
        else:
            dist = Categorical(logits=out)
            if action is None:
                action = dist.sample()
            logprob, entropy = dist.log_prob(action), dist.entropy()
        value = self.critic(h).squeeze(-1)
        if self.recurrent:
            return action, logprob, entropy, value, state
        return action, logprob, entropy, value


# --------------------------------------------------------------------------- GAE and loss
def compute_gae(rewards, values, terminateds, dones, valids, next_value, gamma, lam):
    """Advantages (T, N) by the backward recursion of the README's GAE, one Python step per t:

    delta[t] = r[t] + gamma * (1 - terminated[t]) * V(s[t+1]) - V(s[t])
    A[t]     = (delta[t] + gamma * lam * (1 - done[t]) * A[t+1]) * valid[t],   A[T] = 0

    V(s[t+1]) is values[t+1] (next_value at t = T-1); after a done that is V(final obs)."""
    T = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    lastgaelam = torch.zeros_like(next_value)
    for t in reversed(range(T)):
        nv = next_value if t == T - 1 else values[t + 1]
        delta = rewards[t] + gamma * (1.0 - terminateds[t]) * nv - values[t]
        lastgaelam = delta + gamma * lam * (1.0 - dones[t]) * lastgaelam
        lastgaelam = lastgaelam * valids[t]  # a reset step: A = 0, the recursion goes on from 0
        advantages[t] = lastgaelam
    return advantages


def weighted_mean(x, w):
    """Mean of ``x`` over the rows with weight ``w`` (0 for reset steps)."""
    return (w * x).sum() / w.sum().clamp(min=1.0)


def ppo_loss_terms(cfg, ratio, entropy, newvalue, adv, returns, old_values, w):
    """(clipped surrogate, value loss, entropy), each a weighted mean over the minibatch."""
    if cfg.norm_adv:  # per minibatch, unbiased std over the valid rows
        mean = weighted_mean(adv, w)
        var = (w * (adv - mean) ** 2).sum() / (w.sum() - 1.0).clamp(min=1.0)
        adv = (adv - mean) / (var.sqrt() + 1e-8)
    pg_loss1 = -adv * ratio
    pg_loss2 = -adv * torch.clamp(ratio, 1.0 - cfg.clip_coef, 1.0 + cfg.clip_coef)
    pg_loss = weighted_mean(torch.max(pg_loss1, pg_loss2), w)
    if cfg.clip_vloss:
        v_unclipped = (newvalue - returns) ** 2
        v_clipped = old_values + torch.clamp(newvalue - old_values, -cfg.clip_coef, cfg.clip_coef)
        v_loss = 0.5 * weighted_mean(torch.max(v_unclipped, (v_clipped - returns) ** 2), w)
    else:
        v_loss = 0.5 * weighted_mean((newvalue - returns) ** 2, w)
    return pg_loss, v_loss, weighted_mean(entropy, w)


# --------------------------------------------------------------------------- the run
def run_eager(env_id: str, num_updates: int, seed: int = 1, warmup_updates: int = 1,
              config=None, verbose: bool = False, **overrides) -> dict:
    """Train ``num_updates`` PPO updates eagerly; return throughput, time split and return.

    ``config`` (a ``PPOConfig``) defaults to ``make_config(env_id, seed=seed,
    total_timesteps=num_updates * batch, **overrides)``; the learning rate anneals over
    ``num_updates``. Steady-state figures cover the updates after the first ``warmup_updates``.
    """
    import envpool
    from fastppo.config import make_config

    if not 0 <= warmup_updates < num_updates:
        raise ValueError(f"warmup_updates must be in [0, num_updates), got {warmup_updates} "
                         f"with num_updates={num_updates}")
    if config is None:
        batch = make_config(env_id, **overrides).batch_size
        config = make_config(env_id, seed=seed, total_timesteps=num_updates * batch, **overrides)
    cfg = config
    T, N = cfg.num_steps, cfg.num_envs
    batch_size, mb_size = cfg.batch_size, cfg.minibatch_size

    old_threads = torch.get_num_threads()
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    threads = torch.get_num_threads()
    envs = None
    try:
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)

        atari = cfg.preset == "atari"
        kwargs = dict(episodic_life=cfg.episodic_life, reward_clip=cfg.reward_clip) if atari \
            else {}
        if cfg.stack_num is not None:
            kwargs["stack_num"] = cfg.stack_num
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*precision lowered by casting")
            envs = envpool.make(env_id, env_type="gymnasium", num_envs=N, seed=cfg.seed,
                                **kwargs)
            obs_space, act_space = envs.observation_space, envs.action_space
        agent = Agent(obs_space.shape, act_space, cfg.hidden_size, cfg.recurrent,
                      cfg.rnn_hidden_size)
        recurrent = agent.recurrent
        if recurrent and N % cfg.num_minibatches:
            raise ValueError(f"num_minibatches must divide num_envs ({N}) for a recurrent agent")
        optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.learning_rate, eps=1e-5)
        continuous = agent.continuous
        low = high = None
        if continuous:
            low, high = act_space.low, act_space.high
        obs_norm = NormalizeObservation(obs_space.shape, cfg.clip_obs) if cfg.norm_obs else None
        rew_norm = NormalizeReward(N, cfg.gamma, cfg.clip_reward) if cfg.norm_reward else None

        obs_dtype = torch.uint8 if obs_space.dtype == np.uint8 else torch.float32

        def to_tensor(o):
            if obs_norm is not None:
                o = obs_norm(o)
            return torch.as_tensor(o, dtype=obs_dtype)

        # Rollout storage (T, N, ...), time-major.
        obs = torch.zeros((T, N) + tuple(obs_space.shape), dtype=obs_dtype)
        actions = torch.zeros((T, N) + tuple(act_space.shape),
                              dtype=torch.float32 if continuous else torch.int64)
        logprobs = torch.zeros((T, N))
        rewards = torch.zeros((T, N))
        terminateds = torch.zeros((T, N))
        dones = torch.zeros((T, N))
        values = torch.zeros((T, N))
        valids = torch.zeros((T, N))
        starts = torch.zeros((T, N))  # 1 where the observation begins an episode

        # Episode statistics (raw rewards; Atari: whole games).
        ep_return = np.zeros(N, np.float64)
        recent_returns = collections.deque(maxlen=10)
        episodes = 0

        raw_obs, _ = envs.reset()
        next_obs = to_tensor(raw_obs)
        next_valid = np.ones(N, bool)  # False on the step after a done (a reset step)
        next_start = torch.ones(N)  # the observation begins an episode (after a reset step)
        next_state = agent.initial_state(N) if recurrent else None
        global_step = 0
        per_update = []
        update_ends = []
        start = time.perf_counter()

        for update in range(1, num_updates + 1):
            if cfg.anneal_lr:
                optimizer.param_groups[0]["lr"] = \
                    cfg.learning_rate * (1.0 - (update - 1.0) / num_updates)
            env_s = policy_s = 0.0
            t_rollout = time.perf_counter()
            if recurrent:  # the state this rollout begins with, for the update's unroll
                initial_state = tuple(x.clone() for x in next_state) if agent.lstm \
                    else next_state.clone()
            for step in range(T):
                global_step += N
                obs[step] = next_obs
                valids[step] = torch.from_numpy(next_valid)
                starts[step] = next_start

                t0 = time.perf_counter()
                with torch.no_grad():
                    if recurrent:
                        action, logprob, _, value, next_state = agent.get_action_and_value(
                            next_obs, state=next_state, start=next_start)
                    else:
                        action, logprob, _, value = agent.get_action_and_value(next_obs)
                policy_s += time.perf_counter() - t0
                actions[step], logprobs[step], values[step] = action, logprob, value

                env_action = action.numpy()
                if continuous:
                    env_action = np.clip(env_action, low, high)
                t0 = time.perf_counter()
                raw_obs, reward, terminated, truncated, info = envs.step(env_action)
                env_s += time.perf_counter() - t0

                done = terminated | truncated
                raw_reward = info["reward"] if atari else reward
                game_over = (info["terminated"].astype(bool) | truncated) if atari else done
                ep_return += np.where(next_valid, raw_reward, 0.0)
                for i in np.flatnonzero(game_over):
                    recent_returns.append(float(ep_return[i]))
                    episodes += 1
                ep_return[game_over] = 0.0
                if rew_norm is not None:
                    reward = rew_norm(reward, done, next_valid)

                rewards[step] = torch.as_tensor(reward, dtype=torch.float32)
                terminateds[step] = torch.from_numpy(terminated.astype(np.float32))
                dones[step] = torch.from_numpy(done.astype(np.float32))
                next_obs = to_tensor(raw_obs)
                next_start = torch.from_numpy((~next_valid).astype(np.float32))
                next_valid = ~done
            rollout_s = time.perf_counter() - t_rollout

            # ---- learning: GAE (a backward loop over T) + update epochs
            t_learn = time.perf_counter()
            with torch.no_grad():
                next_value = agent.get_value(next_obs, next_state, next_start) if recurrent \
                    else agent.get_value(next_obs)
                advantages = compute_gae(rewards, values, terminateds, dones, valids,
                                         next_value, cfg.gamma, cfg.gae_lambda)
                returns = advantages + values

            b_obs = obs.reshape((-1,) + tuple(obs_space.shape))
            b_actions = actions.reshape((-1,) + tuple(act_space.shape))
            b_logprobs, b_advantages = logprobs.reshape(-1), advantages.reshape(-1)
            b_returns, b_values, b_w = returns.reshape(-1), values.reshape(-1), valids.reshape(-1)
            b_starts = starts.reshape(-1)

            b_inds = np.arange(batch_size)
            # recurrent: minibatches of whole envs, each env's T rows in time-major order
            env_inds, flat_inds = np.arange(N), np.arange(batch_size).reshape(T, N)
            envs_per_mb = N // cfg.num_minibatches
            clipfracs = []
            for _epoch in range(cfg.update_epochs):
                np.random.shuffle(env_inds if recurrent else b_inds)
                for first in range(0, batch_size, mb_size):
                    if recurrent:
                        mb_envs = env_inds[first // T:first // T + envs_per_mb]
                        mb = torch.from_numpy(flat_inds[:, mb_envs].ravel())
                        e = torch.from_numpy(mb_envs)
                        state0 = (initial_state[0][:, e], initial_state[1][:, e]) \
                            if agent.lstm else initial_state[:, e]
                        _, newlogprob, entropy, newvalue, _ = agent.get_action_and_value(
                            b_obs[mb], b_actions[mb], state=state0, start=b_starts[mb])
                    else:
                        mb = torch.from_numpy(b_inds[first:first + mb_size])
                        _, newlogprob, entropy, newvalue = agent.get_action_and_value(
                            b_obs[mb], b_actions[mb])
                    w = b_w[mb]
                    logratio = newlogprob - b_logprobs[mb]
                    ratio = logratio.exp()
                    with torch.no_grad():
                        old_approx_kl = weighted_mean(-logratio, w)
                        approx_kl = weighted_mean((ratio - 1) - logratio, w)
                        clipfracs.append(weighted_mean(
                            ((ratio - 1.0).abs() > cfg.clip_coef).float(), w).item())

                    pg_loss, v_loss, entropy_loss = ppo_loss_terms(
                        cfg, ratio, entropy, newvalue, b_advantages[mb], b_returns[mb],
                        b_values[mb], w)
                    loss = pg_loss - cfg.ent_coef * entropy_loss + cfg.vf_coef * v_loss

                    optimizer.zero_grad()
                    loss.backward()
                    nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
                    optimizer.step()

                if cfg.target_kl is not None and approx_kl.item() > cfg.target_kl:
                    break
            learn_s = time.perf_counter() - t_learn
            end = time.perf_counter()
            update_ends.append(end)
            per_update.append({
                "update": update, "global_step": global_step, "env_s": env_s,
                "inference_s": policy_s, "rollout_s": rollout_s, "learn_s": learn_s,
                "pg_loss": pg_loss.item(), "v_loss": v_loss.item(),
                "entropy": entropy_loss.item(), "approx_kl": approx_kl.item(),
                "old_approx_kl": old_approx_kl.item(), "clipfrac": float(np.mean(clipfracs)),
                "recent_return": float(np.mean(recent_returns)) if recent_returns else None,
            })
            if verbose:
                r = per_update[-1]["recent_return"]
                print(f"update {update}/{num_updates}  step {global_step}  "
                      f"return(last 10) {'n/a' if r is None else f'{r:.1f}'}  "
                      f"sps {global_step / (end - start):,.0f}", flush=True)
    finally:
        if envs is not None:
            envs.close()
        torch.set_num_threads(old_threads)

    steady = per_update[warmup_updates:]
    t_begin = update_ends[warmup_updates - 1] if warmup_updates else start
    steady_seconds = update_ends[-1] - t_begin
    steady_steps = len(steady) * batch_size

    def mean(key):
        return float(np.mean([u[key] for u in steady]))

    return {
        "env_id": env_id, "preset": cfg.preset, "variant": "eager",
        "num_updates": num_updates, "warmup_updates": warmup_updates, "batch_size": batch_size,
        "seed": cfg.seed, "torch_threads": threads,
        "steady_sps": steady_steps / steady_seconds, "steady_steps": steady_steps,
        "steady_seconds": steady_seconds, "total_seconds": update_ends[-1] - start,
        "env_s": mean("env_s"), "inference_s": mean("inference_s"),
        "rollout_s": mean("rollout_s"), "learn_s": mean("learn_s"),
        "recent_return": float(np.mean(recent_returns)) if recent_returns else None,
        "episodes": episodes, "per_update": per_update,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("env_id")
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--recurrent", choices=("none", "lstm", "gru"), default=None,
                        help="a recurrent core after the body (default: the preset's, none)")
    parser.add_argument("--stack-num", type=int, default=None,
                        help="EnvPool's stack_num for Atari/ViZDoom (default: EnvPool's)")
    args = parser.parse_args()
    r = run_eager(args.env_id, args.updates, args.seed, args.warmup, verbose=True,
                  recurrent=args.recurrent, stack_num=args.stack_num)
    ret = "n/a" if r["recent_return"] is None else f"{r['recent_return']:.1f}"
    print(f"{args.env_id}: steady {r['steady_sps']:,.0f} SPS, per update env "
          f"{r['env_s']:.3f} s, inference {r['inference_s']:.3f} s, rollout "
          f"{r['rollout_s']:.3f} s, learn {r['learn_s']:.3f} s; return (last 10 episodes) {ret}")


if __name__ == "__main__":
    main()
