"""EnvPool wrapper: env-id errors, running statistics, episode tracking across lives, clipping."""

import numpy as np
import pytest

from fastppo.config import make_config
from fastppo.envs import EpisodeTracker, RunningMeanStd, RunningNorm, VecEnv, check_env_id, \
    check_spaces, env_spaces


def test_unknown_env_id_lists_closest_ids():
    check_env_id("CartPole-v1")
    with pytest.raises(ValueError, match="env_id") as err:
        check_env_id("CartPole-v9")
    assert "CartPole-v1" in str(err.value)
    listed = str(err.value).split("closest known ids: ")[1].split(", ")
    assert len(listed) == len(set(listed)), listed  # EnvPool and Gymnasium both know some ids
    with pytest.raises(ValueError, match="HalfCheetah-v4"):
        check_env_id("HalfCheetah-v44")


def test_running_mean_std_matches_pooled_numpy():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, (n, 5)) for n in (1, 7, 64, 3)]
    rms = RunningMeanStd((5,))
    for b in batches:
        rms.update(b)
    pooled = np.concatenate(batches)
    np.testing.assert_allclose(rms.mean, pooled.mean(0), rtol=1e-4)
    np.testing.assert_allclose(rms.var, pooled.var(0), rtol=1e-4)
    state = rms.state_dict()
    other = RunningMeanStd((5,))
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.mean, rms.mean)


def test_running_mean_std_normalizes_with_its_statistics_updated_or_not():
    rng = np.random.default_rng(1)
    first, rows = rng.normal(3.0, 2.0, (6, 3)), rng.normal(3.0, 2.0, (4, 3))
    fused, stepwise = RunningMeanStd((3,)), RunningMeanStd((3,))
    for rms in (fused, stepwise):
        rms.update(first)
    out_fused, out_stepwise = np.empty((4, 3), np.float32), np.empty((4, 3), np.float32)
    fused.update_and_normalize(rows, 1e-8, 1.5, out_fused)
    stepwise.update(rows)
    stepwise.normalize(rows, 1e-8, 1.5, out_stepwise)
    pooled = np.concatenate([first, rows])
    np.testing.assert_allclose(fused.mean, pooled.mean(0), rtol=1e-4)  # rows folded in first
    expected = np.clip((rows - fused.mean) / np.sqrt(fused.var + 1e-8), -1.5, 1.5)
    np.testing.assert_allclose(out_fused, expected, rtol=1e-6)
    np.testing.assert_allclose(out_stepwise, out_fused, rtol=1e-6)
    assert fused.count == stepwise.count and stepwise.flat_mean.base is stepwise.mean


def test_reward_scaling_by_discounted_return_std_skips_reset_steps():
    gamma = 0.9
    norm = RunningNorm(2, (3,), gamma=gamma, norm_obs=False, norm_reward=True, clip_obs=10,
                       clip_reward=10)
    rewards = np.array([[1.0, 2.0], [0.5, -1.0], [0.0, 3.0], [2.0, 1.0]])
    dones = np.array([[False, False], [True, False], [False, False], [False, True]])
    valid = np.array([[True, True], [True, True], [False, True], [True, True]])
    returns_seen, g = [], np.zeros(2)
    for r, d, v in zip(rewards, dones, valid):
        out = norm.reward(r.astype(np.float32), d, v)
        g = np.where(v, gamma * g + r, g)
        returns_seen.extend(g[v])
        expected = np.clip(r / np.sqrt(np.var(returns_seen) + 1e-8), -10, 10)
        np.testing.assert_allclose(out, expected, rtol=1e-3)
        g[d] = 0.0


def test_observation_normalization_is_clipped_and_frozen_without_update():
    norm = RunningNorm(4, (2,), gamma=0.99, norm_obs=True, norm_reward=False, clip_obs=1.5,
                       clip_reward=10)
    obs = np.array([[0.0, 10.0], [1.0, 10.0], [2.0, 10.0], [300.0, 10.0]])
    out = norm.observation(obs, update=True)
    assert out.dtype == np.float32 and np.abs(out).max() <= 1.5
    mean = norm.obs_rms.mean.copy()
    norm.observation(obs + 100, update=False)
    np.testing.assert_array_equal(norm.obs_rms.mean, mean)


def test_episode_tracker_counts_valid_steps_until_the_game_ends():
    tracker = EpisodeTracker(2)
    assert tracker.step(np.array([1.0, 2.0]), np.array([False, False]), np.array([True, True])) \
        == []
    finished = tracker.step(np.array([3.0, 1.0]), np.array([True, False]), np.array([True, True]))
    assert finished == [(0, 4.0, 2)]
    # env 0's next step is a reset step: ignored; env 1 keeps counting.
    assert tracker.step(np.array([0.0, 1.0]), np.array([False, True]),
                        np.array([False, True])) == [(1, 4.0, 3)]
    assert tracker.returns.tolist() == [0.0, 0.0] and tracker.lengths.tolist() == [0, 0]


def test_atari_return_counts_across_lives():
    """Breakout has 5 lives: with episodic_life each lost life ends a training episode
    (terminated), but the reported episode is the whole game, in unclipped rewards."""
    config = make_config("Breakout-v5", num_envs=1)
    envs = VecEnv(config, 1, seed=3)
    envs.reset()
    rng = np.random.default_rng(0)
    life_losses, clipped_sum, steps = 0, 0.0, 0
    while True:
        step = envs.step(rng.integers(0, 4, size=1).astype(np.int32))
        steps += 1
        clipped_sum += float(step.reward[0])
        life_losses += int(step.terminated[0])
        if step.episodes:
            break
        assert steps < 20_000
    (_, ep_return, ep_length), = step.episodes
    assert life_losses >= 2  # several training episodes made one reported game
    assert ep_return >= clipped_sum  # raw Breakout rewards are >= their clipped sign
    assert ep_length == steps - (life_losses - 1)  # reset steps after lost lives not counted
    envs.close()


def test_continuous_actions_are_clipped_and_presets_checked_against_spaces():
    from gymnasium import spaces

    config = make_config("HalfCheetah-v4", num_envs=2)
    envs = VecEnv(config, 2, seed=1)
    clipped = envs.env_action(np.array([[-3.0] * 6, [0.5] * 6], np.float32))
    assert clipped.min() == -1.0 and clipped[1].tolist() == [0.5] * 6
    envs.close()
    with pytest.raises(ValueError, match="preset"):
        check_spaces(make_config("CartPole-v1", preset="mujoco"), spaces.Box(-1, 1, (4,)),
                     spaces.Discrete(2))
    with pytest.raises(ValueError, match="preset"):
        check_spaces(make_config("HalfCheetah-v4", preset="atari"), spaces.Box(-1, 1, (17,)),
                     spaces.Box(-1, 1, (6,)))
    with pytest.raises(ValueError, match="preset: 'mujoco' needs a continuous"):
        env_spaces(make_config("CartPole-v1", preset="mujoco"))  # a run's spaces are checked
